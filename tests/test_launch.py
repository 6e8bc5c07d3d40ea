"""tests/launch.py: a launch whose rank aborts at start-up runs once more; other failures are kept."""

from __future__ import annotations

import sys

from tests.launch import launch

# Fails like the start-up abort while its marker file is missing, then succeeds; or always fails alike.
SCRIPT = """
import pathlib, sys
marker = pathlib.Path(sys.argv[1])
if sys.argv[2] == "always" or not marker.exists():
    marker.touch()
    sys.stderr.write("terminate called without an active exception\\n")
    sys.exit(134)
print("ok", sys.argv[-1])
"""


def test_a_start_up_abort_is_launched_once_more_on_a_fresh_port(tmp_path):
    command = [sys.executable, "-c", SCRIPT, str(tmp_path / "marker"), "once", "--master_port", "1"]
    completed = launch(command, {}, timeout=60)
    assert completed.returncode == 0
    word, port = completed.stdout.split()
    assert word == "ok" and port != "1"  # the second launch got a port of its own


def test_an_abort_that_repeats_is_returned(tmp_path):
    command = [sys.executable, "-c", SCRIPT, str(tmp_path / "marker"), "always"]
    completed = launch(command, {}, timeout=60)
    assert completed.returncode == 134 and "terminate called" in completed.stderr


def test_other_failures_are_not_retried(tmp_path):
    marker = tmp_path / "ran"
    script = (
        f"import pathlib, sys; p = pathlib.Path({str(marker)!r}); assert not p.exists(); p.touch(); "
        "sys.exit(3)"
    )
    completed = launch([sys.executable, "-c", script], {}, timeout=60)
    assert completed.returncode == 3 and "AssertionError" not in completed.stderr
