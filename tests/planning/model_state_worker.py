"""One rank of the model-state check: build the toolkit's engine for each ds_config given, train one
iteration, and at the update (inside the torch optimizer's step, when DeepSpeed's fp32 gradients are
attached) sum the bytes of every tensor the engine holds; rank 0 prints one JSON line per engine and rank
with what was measured and what :func:`megatron.planning.memory.model_state_bytes` predicts.

Usage (under torchrun): ``model_state_worker.py <flags without --deepspeed_config> -- ds1.json ds2.json``.
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from megatron.config.arguments import parse_args
from megatron.config.build import build_config, world_size_from_env
from megatron.parallel.context import parallel_context_for
from megatron.planning.from_config import buckets_of, layout_of, precision_of
from megatron.planning.memory import model_state_bytes, weight_bytes
from megatron.planning.params import count_parameters
from megatron.training.distributed import initialize_distributed
from megatron.training.engine import build_engine
from megatron.training.step import Batch
from pretrain_gpt import gpt_model_provider

VOCAB = 500
# DeepSpeed's per-micro-batch reduce bucket: measured apart, against the predicted transient bucket.
BUCKET_ATTRIBUTES = ("ipg_buckets", "ipg_buffer")


class Storages:
    """Each storage once, by address, with the bytes it holds."""

    def __init__(self):
        self.bytes: dict[int, int] = {}
        self._visited: set[int] = set()

    def add(self, tensor: torch.Tensor, with_grad: bool = True) -> None:
        storage = tensor.untyped_storage()
        self.bytes.setdefault(storage.data_ptr(), storage.nbytes())
        if with_grad and tensor.grad is not None:
            self.add(tensor.grad)

    def walk(self, obj, depth: int = 0) -> None:
        """Every tensor reachable from ``obj`` through DeepSpeed's and torch's objects, lists and dicts
        (not through modules or the engine, which the parameters cover)."""
        if depth > 8 or id(obj) in self._visited:
            return
        self._visited.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "meta":
                self.add(obj)
        elif isinstance(obj, dict):
            for value in list(obj.values()):
                self.walk(value, depth + 1)
        elif isinstance(obj, list | tuple):
            for value in obj:
                self.walk(value, depth + 1)
        elif isinstance(obj, nn.Module) or type(obj).__name__.endswith("Engine"):
            return
        elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] in ("deepspeed", "torch"):
            if not type(obj).__module__.startswith("torch.distributed"):
                for name, value in list(vars(obj).items()):
                    if name not in BUCKET_ATTRIBUTES:
                        self.walk(value, depth + 1)

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


def bucket_bytes(optimizer) -> int:
    buckets = Storages()
    for name in BUCKET_ATTRIBUTES:
        buckets.walk(getattr(optimizer, name, None))
    return buckets.total


def measure_at_update(built, config) -> dict[str, int]:
    """Run one iteration; return the bytes held inside the torch optimizer's step (at its largest)."""
    engine = built.engine
    basic = getattr(engine, "basic_optimizer", None) or engine.optimizer
    measured: dict[str, int] = {}
    step = basic.step

    def step_and_measure(*args, **kwargs):
        result = step(*args, **kwargs)
        states, parameters = Storages(), Storages()
        for param in engine.module.parameters():
            held = getattr(param, "ds_tensor", None)
            held = param if held is None else held
            parameters.add(held, with_grad=False)
            states.add(held)
            if param.grad is not None:
                states.add(param.grad)
        states.walk(engine.optimizer)
        states.walk(basic)
        # ZeRO steps the torch optimizer once per parameter group, making each group's fp32 gradients just
        # before its step: the largest of the calls is the update's peak.
        if states.total > measured.get("model_states", 0):
            measured.update(
                parameters=parameters.total, model_states=states.total, bucket=bucket_bytes(engine.optimizer)
            )
        return result

    basic.step = step_and_measure
    generator = torch.Generator().manual_seed(0)

    def batches():
        while True:
            shape = (config.batch.micro_batch_size, config.model.seq_length + 1)
            text = torch.randint(0, VOCAB, shape, generator=generator)
            yield Batch(text[:, :-1].contiguous(), text[:, 1:].contiguous(), None)

    built.train_step(batches(), config.batch.gradient_accumulation_steps)
    return measured


def main(argv: list[str]) -> None:
    split = argv.index("--")
    flags, ds_configs = argv[:split], argv[split + 1 :]
    initialize_distributed()
    for ds_config in ds_configs:
        config = build_config(
            parse_args([*flags, "--deepspeed_config", ds_config]),
            world_size_from_env(),
            VOCAB,
            needs_corpus=False,
        )
        built = build_engine(config, parallel_context_for(config.parallel), gpt_model_provider)
        measured = measure_at_update(built, config)
        layout, precision = layout_of(config), precision_of(config)
        stage = parallel_context_for(config.parallel).pipeline_rank
        parameters = count_parameters(config.model, layout, config.moe).per_stage[stage]
        states = model_state_bytes(parameters, layout, precision)
        buckets = buckets_of(config)
        predicted_bucket = (
            weight_bytes(precision) * buckets.reduce_bucket_size if layout.zero_stage == 3 else 0
        )
        record = dict(
            ds_config=ds_config,
            stage=layout.zero_stage,
            precision=precision,
            ranks=layout.num_gpus,
            rank=torch.distributed.get_rank(),
            optimizer=type(built.engine.optimizer).__name__,
            measured=measured,
            predicted=dict(
                parameters=states.parameters,
                model_states=states.parameters
                + states.gradients
                + states.optimizer_states
                + states.step_gradients
                + states.host,
                host=states.host,
                bucket=predicted_bucket,
            ),
        )
        records = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(records, record)
        if torch.distributed.get_rank() == 0:
            for each in records:
                print("MODEL_STATE " + json.dumps(each), flush=True)
        built.engine.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
