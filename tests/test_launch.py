"""tests/launch.py: a launch whose rank aborts at start-up runs once more; other failures are kept. Test
processes get ports of their pytest-xdist worker's own block and no inherited process-group variables."""

from __future__ import annotations

import socket
import sys

import pytest

from tests.launch import (
    LOWEST_TEST_PORT,
    PROCESS_GROUP_VARIABLES,
    child_env,
    first_ephemeral_port,
    free_port,
    launch,
)

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


@pytest.mark.parametrize("worker", [0, 1, 2])
def test_each_worker_takes_free_ports_from_its_own_block_below_the_ephemeral_range(monkeypatch, worker):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
    block = (first_ephemeral_port() - LOWEST_TEST_PORT) // 3
    start = LOWEST_TEST_PORT + worker * block
    assert all(start <= free_port() < start + block for _ in range(50))


def test_a_port_that_is_listened_on_is_never_handed_out(monkeypatch):
    """Blocks of two ports: with one held the other comes back every time; with both held, an error."""
    workers = (first_ephemeral_port() - LOWEST_TEST_PORT) // 2
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw5")
    first = LOWEST_TEST_PORT + 5 * 2
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first))
        holder.listen()
        assert {free_port() for _ in range(20)} == {first + 1}
        with socket.socket() as second_holder:
            second_holder.bind(("127.0.0.1", first + 1))
            second_holder.listen()
            with pytest.raises(RuntimeError, match=f"no free port in {first}-{first + 1}"):
                free_port()


def test_children_do_not_inherit_this_process_group(monkeypatch):
    for name in PROCESS_GROUP_VARIABLES:
        monkeypatch.setenv(name, "7")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    env = child_env(MASTER_PORT="1234")
    assert env["SOMETHING_ELSE"] == "kept" and env["MASTER_PORT"] == "1234"
    assert not (set(PROCESS_GROUP_VARIABLES) - {"MASTER_PORT"}) & set(env)
