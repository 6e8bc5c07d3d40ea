"""The finetuning run: the task's data and model through the pretraining loop (:class:`Pretraining`).

Engine, ZeRO stages, precision, LR schedule, logging, checkpoints, signals and resume are the pretraining
machinery's; what differs is the data (:class:`TaskData`: the epochs' sample order over the task's
training set), the model (:class:`megatron.model.classification.BertClassifier`, started from
``--pretrained-checkpoint``) and the evaluation (:class:`Finetuning`: accuracy on every ``--valid-data``
set, every ``--eval-interval`` iterations, at the end of every epoch and at the end).

The training length is Megatron-LM's: ``--epochs`` times the global batches of one epoch. The sample
order depends only on ``--seed`` and the position, which checkpoints save as the consumed samples, so a
run resumed mid-epoch reads exactly the batches an uninterrupted run reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import torch
from torch.utils.data import Dataset

from megatron.config.build import build_config, check_machine, world_size_from_env
from megatron.config.errors import ConfigError
from megatron.config.masked_lm import check_tokenizer_type
from megatron.config.schema import Config
from megatron.data.tokenizer import build_tokenizer
from megatron.finetuning.accuracy import evaluate_accuracy, overall
from megatron.finetuning.pretrained import load_pretrained, read_pretrained
from megatron.finetuning.samples import EpochOrder
from megatron.finetuning.tasks import TASKS, Task, read_train_set, read_valid_sets
from megatron.model.classification import BertClassifier
from megatron.parallel.context import ParallelContext, parallel_context_for
from megatron.training.data_provider import Datasets
from megatron.training.determinism import apply_deterministic_mode
from megatron.training.distributed import initialize_distributed
from megatron.training.pretrain import Pretraining

logger = logging.getLogger("megatron")


@dataclasses.dataclass(frozen=True)
class TaskBatch:
    tokens: torch.Tensor
    padding_mask: torch.Tensor
    tokentype_ids: torch.Tensor
    labels: torch.Tensor

    def model_inputs(self) -> tuple:
        """:class:`BertClassifier`'s forward arguments; without the last (the labels) it returns logits."""
        return self.tokens, self.padding_mask, self.tokentype_ids, self.labels


@dataclasses.dataclass(frozen=True)
class TaskData:
    """The training loop's data provider: the epochs' order over the training set, no LM validation split
    (:class:`Finetuning` evaluates the validation sets itself)."""

    order: EpochOrder | None  # None: --epochs 0, nothing to train on

    def build_datasets(self, config: Config, num_samples: tuple[int, int, int]) -> Datasets:
        return self.order, None, None

    def make_batch(
        self, sample: dict, device: torch.device, parallel: ParallelContext, seq_length: int | None = None
    ) -> TaskBatch:
        tokens, padding_mask, types, labels = (
            sample[key].to(device, non_blocking=True) for key in ("text", "padding_mask", "types", "label")
        )
        return TaskBatch(tokens, padding_mask, types, labels)


class Finetuning(Pretraining):
    """The pretraining loop, evaluating accuracy on ``valid_sets`` instead of a validation loss."""

    def __init__(self, *args, valid_sets: list[Dataset], **kwargs):
        self.valid_sets = valid_sets
        super().__init__(*args, **kwargs)

    def _build_data(self) -> None:
        if self.data.order is not None:  # --epochs 0 reads no training data
            super()._build_data()

    def _validates(self) -> bool:
        return bool(self.valid_sets)

    def _evaluation_due(self) -> bool:
        """Every --eval-interval iterations and, as in Megatron-LM, at the end of every epoch."""
        consumed = self.state.consumed_train_samples
        epoch_ended = self.data.order.epoch_ends(consumed - self.config.batch.global_batch_size, consumed)
        return self._validates() and (super()._evaluation_due() or epoch_ended)

    def _evaluate(self, where: str) -> None:
        order, state = self.data.order, self.state
        if order is not None:
            where = f"{where}, epoch {state.consumed_train_samples / order.per_epoch:.2f}"
        results = [
            evaluate_accuracy(
                self.engine,
                dataset,
                lambda sample: self.data.make_batch(sample, self.context.device, self.parallel),
                self.config.batch.micro_batch_size,
                self.parallel,
            )
            for dataset in self.valid_sets
        ]
        for result in results if len(results) == 1 else [*results, overall(results)]:
            logger.info("%s", result.report(where))
        self.metrics.scalars(
            {f"accuracy {result.name}": result.percent for result in results},
            state.iteration,
            state.consumed_train_samples,
        )

    def evaluate_only(self) -> None:
        """``--epochs 0``: the accuracy of the model as loaded, without training (Megatron-LM's meaning)."""
        self._evaluate(f"iteration {self.state.iteration} (--epochs 0, no training)")
        self.metrics.close()


def _check_task_flags(args: argparse.Namespace) -> None:
    if args.epochs is None or args.epochs < 0:
        raise ConfigError(
            f"--epochs {args.epochs}: finetuning needs the number of passes over --train-data (0: evaluate "
            "only)."
        )
    if args.train_iters is not None or args.train_samples is not None:
        raise ConfigError(
            f"--train-iters / --train-samples with --task {args.task}: the length is --epochs over "
            "--train-data; drop them."
        )
    corpus = [flag for flag in ("data_path", "train_data_path", "valid_data_path", "test_data_path")
              if getattr(args, flag) is not None]  # fmt: skip
    if corpus:
        raise ConfigError(
            f"--{corpus[0].replace('_', '-')} with --task {args.task}: finetuning reads --train-data and "
            "--valid-data in the task's format; drop it."
        )
    if args.epochs > 0 and not args.train_data:
        raise ConfigError(f"--task {args.task} needs --train-data (or --epochs 0 to evaluate only).")
    if not args.valid_data:
        raise ConfigError(f"--task {args.task} needs --valid-data: the set(s) whose accuracy is reported.")


def _config(args: argparse.Namespace, vocab_size: int, train_iters: int) -> Config:
    """The run's config for ``train_iters``. ``--epochs 0`` evaluates the weights of ``--load`` only: its
    optimizer state and LR schedule, made for another length, are not loaded."""
    changes = {"train_iters": train_iters}
    if args.epochs == 0:
        changes["no_load_optim"] = True
    args = argparse.Namespace(**{**vars(args), **changes})
    config = build_config(args, world_size_from_env(), vocab_size, model_type="bert", needs_corpus=False)
    if config.parallel.pipeline_model_parallel_size > 1:
        raise ConfigError(
            f"--pipeline-model-parallel-size {config.parallel.pipeline_model_parallel_size} with --task "
            f"{args.task}: finetuning runs tensor and data parallel (ZeRO 0-3) only; use "
            "--pipeline-model-parallel-size 1 (a pipelined pretraining checkpoint loads into it)."
        )
    return config


def run_finetuning(args: argparse.Namespace) -> None:
    """Finetune on ``args.task`` (every check first, then the process group, then the loop)."""
    task: Task = TASKS[args.task]
    _check_task_flags(args)
    check_tokenizer_type(args.tokenizer_type, "bert")
    tokenizer = build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file, args.tokenizer_model)
    # The batch and sequence settings decide the iterations, which the schedule needs: a first pass with a
    # stand-in length, then the config of the real one.
    config = _config(args, tokenizer.vocab_size, 1)
    seq_length, global_batch = config.model.seq_length, config.batch.global_batch_size
    valid_sets = read_valid_sets(task, args.valid_data, tokenizer, seq_length)
    order = None
    if args.epochs > 0:
        train = read_train_set(task, args.train_data, tokenizer, seq_length)
        order = EpochOrder(train, args.epochs, global_batch, config.seed, args.keep_last)
        config = _config(args, tokenizer.vocab_size, order.iterations)
        logger.info(
            "finetuning %s: %d training samples, %d epoch(s) of %d samples -> %d iterations of %d; "
            "validation sets: %s",
            args.task, len(train), args.epochs, order.per_epoch, order.iterations, global_batch,
            ", ".join(f"{dataset.name} ({len(dataset)})" for dataset in valid_sets),
        )  # fmt: skip
    check_machine(config)
    pretrained = None
    if args.pretrained_checkpoint:
        pretrained = read_pretrained(args.pretrained_checkpoint, config.model, tokenizer.vocab_size)
    apply_deterministic_mode(config.kernels.deterministic)
    context = initialize_distributed(config.parallel.distributed_backend)
    parallel = parallel_context_for(config.parallel)

    def model_provider(config: Config, context: ParallelContext) -> BertClassifier:
        model = BertClassifier(
            config.model, task.num_classes, context, config.seed, config.recompute, task.multiple_choice
        )
        if pretrained is not None:
            load_pretrained(model, pretrained, context, args.pretrained_checkpoint)
        return model

    run = Finetuning(
        config, context, parallel, model_provider, tokenizer.eod, TaskData(order), valid_sets=valid_sets
    )
    if args.epochs == 0:
        run.evaluate_only()
    else:
        run.run()
