"""The model states the memory model predicts (weights, gradients, optimizer states with the fp32 master
weights, the step's fp32 gradients) equal what DeepSpeed holds at the update, for the toolkit's own engine
on 1, 2 and 4 gloo ranks, ZeRO 0 to 3, bf16 and bf16 autocast.

Within 1%: ZeRO makes the step's fp32 gradients one parameter group at a time, where the memory model
counts both groups' (the weight-decay-free group of norms and biases is ~1% of this model, far less of a
real one), and Adam keeps a step counter per parameter. Within 5% for ZeRO 1/2 on several ranks: there a
partition keeps views into gradient storage beyond its own share (up to +4% seen on some ranks of this toy
model, whose word table is an eighth of it), which the memory model does not count.
"""

from __future__ import annotations

import json

import pytest

from tests.launch import GPT2_TOKENIZER_FLAGS, REPO_ROOT, launch, pretrain_command

TOLERANCE = 0.01
ZERO_1_2_SEVERAL_RANKS = 0.05
REDUCE_BUCKET = 100_000  # elements; DeepSpeed's default (5e8) would allocate gigabytes on CPU
PRECISIONS = {
    "bf16": {"bf16": {"enabled": True}},
    "autocast": {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}},
}
FLAGS = [
    "--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "16",
    "--max-position-embeddings", "16", "--micro-batch-size", "1", "--train-iters", "1", "--lr", "1e-3",
    "--attention-dropout", "0", "--hidden-dropout", "0", *GPT2_TOKENIZER_FLAGS, "--deepspeed",
]  # fmt: skip


def write_configs(folder, stages, precisions, extra=None) -> list[str]:
    paths = []
    for precision in precisions:
        for stage in stages:
            zero = {"stage": stage, "reduce_bucket_size": REDUCE_BUCKET, **(extra or {})}
            path = folder / f"{precision}-zero{stage}.json"
            path.write_text(json.dumps({"zero_optimization": zero, **PRECISIONS[precision]}))
            paths.append(str(path))
    return paths


def run_worker(ranks: int, ds_configs: list[str], flags: list[str] | None = None) -> list[dict]:
    flags = [*FLAGS, "--global-batch-size", str(ranks), *(flags or [])]
    command, env = pretrain_command(flags, nproc=ranks)
    script = command.index(str(REPO_ROOT / "pretrain_gpt.py"))
    command[script] = str(REPO_ROOT / "tests" / "planning" / "model_state_worker.py")
    completed = launch([*command, "--", *ds_configs], env, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    records = [
        json.loads(line.split(" ", 1)[1])
        for line in completed.stdout.splitlines()
        if line.startswith("MODEL_STATE ")
    ]
    assert len(records) == len(ds_configs) * ranks, completed.stdout[-3000:]
    return records


def check(record: dict) -> None:
    measured, predicted = record["measured"], record["predicted"]
    where = (
        f"{record['precision']} ZeRO {record['stage']} on {record['ranks']} ranks, rank {record['rank']} "
        f"({record['optimizer']})"
    )
    assert measured["parameters"] == predicted["parameters"], where
    several = record["stage"] in (1, 2) and record["ranks"] > 1 and record["optimizer"] != "BF16_Optimizer"
    tolerance = ZERO_1_2_SEVERAL_RANKS if several else TOLERANCE
    assert measured["model_states"] == pytest.approx(predicted["model_states"], rel=tolerance), where
    assert measured["bucket"] == predicted["bucket"], where


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_model_states_equal_what_deepspeed_holds(tmp_path, ranks):
    for record in run_worker(ranks, write_configs(tmp_path, [0, 1, 2, 3], list(PRECISIONS))):
        check(record)


@pytest.mark.slow
def test_offloaded_optimizer_states_equal_what_deepspeed_holds(tmp_path):
    """ZeRO-Offload with DeepSpeed's CPUAdam (its C++ op is built on first use: minutes, once per machine).
    On CPU the host and the device are one memory, so their sum is compared."""
    offload = {"offload_optimizer": {"device": "cpu"}}
    for record in run_worker(2, write_configs(tmp_path, [1, 3], ["bf16"], offload)):
        assert record["predicted"]["host"] > 0  # the config read as an offloading layout
        check(record)


@pytest.mark.slow
def test_pipeline_stages_model_states_equal_what_deepspeed_holds(tmp_path):
    """Two stages: bf16 with ZeRO 0 goes through DeepSpeed's BF16_Optimizer there, ZeRO 1 through its
    ZeRO optimizer; each stage is checked against its own parameters."""
    records = run_worker(
        2, write_configs(tmp_path, [0, 1], ["bf16"]), ["--pipeline-model-parallel-size", "2"]
    )
    assert {record["optimizer"] for record in records} == {"BF16_Optimizer", "DeepSpeedZeroOptimizer"}
    for record in records:
        check(record)
