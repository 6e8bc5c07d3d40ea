"""--check-for-nan-in-loss-and-grad and --max-consecutive-nonfinite-iterations: defaults and refusals."""

from __future__ import annotations

import pytest

from megatron.config.errors import ConfigError
from tests.config.recipe import build


def test_the_check_is_on_by_default_and_stops_at_the_first_nonfinite_iteration(tmp_path):
    nonfinite = build(tmp_path).nonfinite
    assert (nonfinite.check, nonfinite.max_consecutive) == (True, 1)
    assert build(tmp_path, {"--check-for-nan-in-loss-and-grad": True}).nonfinite.check
    assert not build(tmp_path, {"--no-check-for-nan-in-loss-and-grad": True}).nonfinite.check
    tolerant = build(tmp_path, {"--max-consecutive-nonfinite-iterations": "5"}).nonfinite
    assert (tolerant.check, tolerant.max_consecutive) == (True, 5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"--max-consecutive-nonfinite-iterations": "0"},
            "--max-consecutive-nonfinite-iterations 0: must be >= 1",
        ),
        (
            {"--max-consecutive-nonfinite-iterations": "3", "--no-check-for-nan-in-loss-and-grad": True},
            "--max-consecutive-nonfinite-iterations 3 with --no-check-for-nan-in-loss-and-grad",
        ),
    ],
)
def test_a_tolerance_that_does_nothing_is_refused(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, changes)
