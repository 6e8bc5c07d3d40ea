"""examples_deepspeed/multinode_gpt.sh with two "nodes" on loopback: a hostfile naming localhost and
127.0.0.1, one `deepspeed --no_ssh --node_rank R` launcher per node, world size 2 on CPU with gloo.
A run of 10 iterations stopped by --exit-interval 6 trains and saves; the same command resumes from its
checkpoint and trains to the end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cluster.common import TINY_GPT_SCRIPT_FLAGS, losses, script_env
from tests.launch import REPO_ROOT, free_port

pytestmark = pytest.mark.slow


def run_two_nodes(output: Path, data_prefix: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Both nodes' launchers at once; returns each node's output after checking both succeeded."""
    hostfile = output / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    env = script_env(
        data_prefix, 10, OUTPUT_DIR=str(output), HOSTFILE=str(hostfile), GPUS_PER_NODE="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
    )  # fmt: skip
    nodes = [
        subprocess.Popen(
            ["bash", "examples_deepspeed/multinode_gpt.sh", *TINY_GPT_SCRIPT_FLAGS, *extra],
            cwd=REPO_ROOT,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=240)[0])
    finally:
        for node in nodes:
            node.kill()
    for rank, (node, text) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank} exited {node.returncode}:\n{text[-4000:]}"
    return outputs


def test_two_loopback_nodes_train_save_and_resume(gpt_data_prefix, tmp_path):
    first, _ = run_two_nodes(tmp_path, gpt_data_prefix, ("--exit-interval", "6"))
    assert "2 rank(s), started by a launcher" in first
    assert sorted(losses(first)) == list(range(1, 7))
    assert float(losses(first)[6]) < float(losses(first)[1])
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / "latest").read_text() == "global_step6"
    assert len(list((checkpoints / "global_step6").glob("*optim_states.pt"))) == 2
    assert (tmp_path / "logs" / "node-0.log").read_text() == first

    resumed, _ = run_two_nodes(tmp_path, gpt_data_prefix)
    assert sorted(losses(resumed)) == list(range(7, 11))
    assert float(losses(resumed)[10]) < float(losses(first)[1])
    assert (checkpoints / "latest").read_text() == "global_step10"
