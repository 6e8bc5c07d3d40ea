"""Tensorboard and timing flags: Megatron-DeepSpeed's defaults; switches that could write nothing refused."""

from __future__ import annotations

import pytest

from megatron.config.errors import ConfigError
from tests.config.recipe import build

SWITCHES = [
    "--log-timers-to-tensorboard",
    "--log-batch-size-to-tensorboard",
    "--log-validation-ppl-to-tensorboard",
    "--log-optimizer-states-to-tensorboard",
    "--log-memory-to-tensorboard",
]


def test_defaults_are_megatron_deepspeeds(tmp_path):
    logging = build(tmp_path).logging
    assert (logging.tensorboard_queue_size, logging.timing_log_level) == (1000, 0)
    assert not any(getattr(logging, flag[2:].replace("-", "_")) for flag in SWITCHES)


def test_switches_and_levels_reach_the_config(tmp_path):
    changes = {flag: True for flag in SWITCHES}
    changes.update({"--tensorboard-dir": "/tb", "--tensorboard-queue-size": "1", "--timing-log-level": "2"})
    logging = build(tmp_path, changes).logging
    assert all(getattr(logging, flag[2:].replace("-", "_")) for flag in SWITCHES)
    assert (logging.tensorboard_queue_size, logging.timing_log_level) == (1, 2)


@pytest.mark.parametrize("flag", SWITCHES)
def test_a_tensorboard_switch_needs_a_tensorboard(tmp_path, flag):
    with pytest.raises(ConfigError, match=f"{flag} without --tensorboard-dir"):
        build(tmp_path, {flag: True})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"--timing-log-level": "3"}, "--timing-log-level: invalid choice: 3"),
        ({"--tensorboard-queue-size": "0"}, "--tensorboard-queue-size 0: must be > 0"),
        (
            {"--log-optimizer-states-to-tensorboard": True, "--tensorboard-dir": "/tb", "--optimizer": "sgd"},
            "--log-optimizer-states-to-tensorboard with --optimizer sgd",
        ),
    ],
)
def test_bad_values_are_refused(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, changes)
