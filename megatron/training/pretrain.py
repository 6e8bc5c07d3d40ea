"""The pretraining run: engine, data, the loop with its logging, evaluation, checkpoints and exit rules."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator

from megatron.checkpointing import TrainState, load_checkpoint, save_checkpoint
from megatron.config.schema import Config
from megatron.data.samplers import build_pretraining_data_loader
from megatron.parallel.context import ParallelContext
from megatron.training.batch_schedule import global_batch_size_at
from megatron.training.curriculum import SeqLengthCurriculum
from megatron.training.data_provider import DataProvider, GPTData
from megatron.training.distributed import DistributedContext, all_reduce_mean, any_rank
from megatron.training.engine import ModelProvider, build_engine
from megatron.training.exit_signals import ExitSignals, StopVote, TrainingInterrupted
from megatron.training.interval_log import IntervalLogger, LogWindow
from megatron.training.memory_report import log_actual, log_prediction
from megatron.training.metrics import MetricsWriter
from megatron.training.nonfinite import NonFiniteError, NonFiniteMonitor, ensure_finite_weights
from megatron.training.step import Batch, evaluate, pipeline_evaluate
from megatron.training.throughput import flops_per_token
from megatron.training.timers import StepTimers

logger = logging.getLogger("megatron")


def dataset_sample_counts(config: Config) -> tuple[int, int, int]:
    """Samples each split must supply (Megatron's rule: evaluation at every interval and once at the end)."""
    batch = config.batch.global_batch_size
    duration = config.duration
    train_samples = duration.train_samples or duration.train_iters * batch
    approx_iters = duration.train_iters or math.ceil(train_samples / batch)
    evaluations = approx_iters // config.logging.eval_interval + 1
    return (
        train_samples,
        evaluations * config.logging.eval_iters * batch,
        config.logging.eval_iters * batch,
    )


def cycle_batches(loader, to_batch: Callable[[dict], Batch]) -> Iterator[Batch]:
    """Validation data is reused from its start once exhausted (Megatron's cyclic valid iterator)."""
    while True:
        for sample in loader:
            yield to_batch(sample)


def train_batches(samples: Iterator[dict], to_batch: Callable[[dict], Batch]) -> Iterator[Batch]:
    """Batches from the shared sample iterator, taken one at a time as the step asks for them."""
    for sample in samples:
        yield to_batch(sample)


class Pretraining:
    """Holds what one run needs; ``run()`` trains to the configured end and saves the final checkpoint."""

    def __init__(
        self,
        config: Config,
        context: DistributedContext,
        parallel: ParallelContext,
        model_provider: ModelProvider,
        eod: int,
        data: DataProvider | None = None,
    ):
        """``data`` is the model family's datasets and batches (GPT's, with ``eod``, when None)."""
        self.config = config
        self.context = context
        self.parallel = parallel
        self.eod = eod
        self.data = data or GPTData(eod, config.data.eod_mask_loss)
        batch = config.batch
        logger.info(
            "batch: global batch size: %d, micro batch size: %d, data-parallel size: %d, "
            "gradient accumulation steps: %d, ZeRO stage %d",
            batch.global_batch_size,
            batch.micro_batch_size,
            batch.data_parallel_size,
            batch.gradient_accumulation_steps,
            config.deepspeed.zero_stage,
        )
        self.memory_prediction = log_prediction(config)
        self.built = build_engine(config, parallel, model_provider)
        self.engine, self.lr_scheduler = self.built.engine, self.built.lr_scheduler
        self.is_pipeline = self.built.is_pipeline
        self.state = TrainState()
        if config.checkpoint.load:
            self.state = load_checkpoint(
                self.engine, config.checkpoint.load, self.lr_scheduler, config, parallel
            )
        self.metrics = MetricsWriter(config, context.is_main)
        self.timers = self._step_timers()
        self.interval_log = IntervalLogger(
            config=config,
            parallel=parallel,
            device=context.device,
            world_size=context.world_size,
            engine=self.engine,
            lr_scheduler=self.lr_scheduler,
            metrics=self.metrics,
            timers=self.timers,
            flops_per_token=flops_per_token(config.model),
        )
        self.nonfinite = NonFiniteMonitor(config, self.engine, context.device)
        self.start_time = time.time()
        self.curriculum = SeqLengthCurriculum(config.curriculum) if config.curriculum else None
        self._evaluated = False  # whether this run has evaluated yet (the first one compiles its graphs)
        # The sequence length the pipeline engine's buffers were last shaped for (curriculum only).
        self._pipeline_seq_length = config.model.seq_length
        self._build_data()

    def _build_data(self) -> None:
        config = self.config
        train, valid, _ = self.data.build_datasets(config, dataset_sample_counts(config))
        if train is None:
            raise ValueError(
                f"--split {config.data.split} leaves no training data; give the first part a weight"
            )
        loader_args = dict(
            micro_batch_size=config.batch.micro_batch_size,
            data_parallel_rank=self.parallel.data_rank,
            data_parallel_size=self.parallel.data_size,
            num_workers=config.data.num_workers,
        )
        device = self.context.device

        def to_batch(sample: dict, seq_length: int | None = None) -> Batch:
            return self.data.make_batch(sample, device, self.parallel, seq_length)

        self._to_batch = to_batch
        train_loader = build_pretraining_data_loader(train, self.state.consumed_train_samples, **loader_args)
        self.train_samples = iter(train_loader)
        self.valid_batches = None
        if valid is not None and config.logging.eval_iters > 0:
            valid_loader = build_pretraining_data_loader(
                valid, self.state.consumed_valid_samples, **loader_args
            )
            self.valid_batches = cycle_batches(valid_loader, to_batch)

    def _train_batches(self, seq_length: int | None) -> Iterator[Batch]:
        """This iteration's micro batches, cut to ``seq_length`` tokens under a curriculum."""
        return train_batches(self.train_samples, lambda sample: self._to_batch(sample, seq_length))

    def _shape_pipeline_for(self, seq_length: int) -> None:
        """DeepSpeed's pipeline engine keeps its inter-stage buffers for one shape; reset them on a change."""
        if self.is_pipeline and seq_length != self._pipeline_seq_length:
            self.engine.reset_activation_shape()
            self._pipeline_seq_length = seq_length

    def _step_timers(self) -> StepTimers:
        level = self.config.logging.timing_log_level
        if level and self.is_pipeline:
            logger.info(
                "--timing-log-level %d: DeepSpeed's pipeline engine runs the whole step as one; only the "
                "iteration time is measured",
                level,
            )
            level = 0
        return StepTimers(level, self.context.device)

    def _finished(self) -> bool:
        """Megatron-DeepSpeed's end: the iterations or samples are done, or --train-tokens were consumed."""
        duration, state = self.config.duration, self.state
        if duration.train_tokens is not None and state.consumed_train_tokens >= duration.train_tokens:
            return True
        if duration.train_iters is not None:
            return state.iteration >= duration.train_iters
        return state.consumed_train_samples >= duration.train_samples

    def _target_iterations(self) -> int:
        """The last iteration, for the log line's progress and ETA (estimated when --train-tokens ends the
        run: tokens per iteration change with a curriculum or a batch-size ramp-up)."""
        duration, batch = self.config.duration, self.config.batch.global_batch_size
        target = duration.train_iters or math.ceil(duration.train_samples / batch)
        if duration.train_tokens is None:
            return target
        tokens_left = max(0, duration.train_tokens - self.state.consumed_train_tokens)
        by_tokens = self.state.iteration + math.ceil(tokens_left / (batch * self.config.model.seq_length))
        return max(self.state.iteration, min(target, by_tokens))

    def run(self) -> TrainState:
        """Train to the end; a stop on non-finite values still writes out the scalars logged before it. A
        signal stops it with a checkpoint, raising :class:`TrainingInterrupted` (``exit_signals``)."""
        try:
            with ExitSignals(self.config.duration.exit_signal_handler) as signals:
                return self._train(signals)
        except NonFiniteError:
            self.metrics.close()
            raise

    def _train(self, signals: ExitSignals) -> TrainState:
        config, state = self.config, self.state
        batch_config = config.batch
        tokens_per_sample = config.model.seq_length
        first_iteration = state.iteration
        window = LogWindow(self.context.device)
        stop_vote = StopVote(self.context.device)
        while not self._finished():
            global_batch = global_batch_size_at(batch_config, state.consumed_train_samples)
            if global_batch != self.engine.train_batch_size():
                self.engine.set_train_batch_size(global_batch)
            micro_batches = global_batch // (batch_config.micro_batch_size * batch_config.data_parallel_size)
            seq_length = self.curriculum.seq_length_at(state.iteration + 1) if self.curriculum else None
            batches = self._train_batches(seq_length)
            self._shape_pipeline_for(seq_length or tokens_per_sample)
            result = self.built.train_step(batches, micro_batches, self.timers)
            state.iteration += 1
            if state.iteration == first_iteration + 1:
                self._log_compile_time("training iteration", window.elapsed())
                log_actual(self.memory_prediction, self.context.device)
            state.consumed_train_samples += global_batch
            tokens = global_batch * (seq_length or tokens_per_sample)
            state.consumed_train_tokens += tokens
            if result.update_applied:
                self.lr_scheduler.step(global_batch, tokens)
            else:
                state.skipped_iterations += 1
            window.add(result, global_batch, tokens, seq_length)
            self.nonfinite.observe(result, state.iteration)

            if state.iteration % config.logging.log_interval == 0:
                target = self._target_iterations()
                seconds_per_iteration = (time.time() - self.start_time) / (state.iteration - first_iteration)
                self.interval_log.log(window, state, global_batch, target, seconds_per_iteration)
                window = LogWindow(self.context.device)
                self.nonfinite.check(state.iteration)
            evaluate_now = self._evaluation_due()
            saved = self._save_due()
            if evaluate_now or saved:
                # Left out of the interval's throughput, as Megatron leaves them out.
                with window.paused():
                    if evaluate_now:
                        self._evaluate(f"iteration {state.iteration}")
                    if saved:
                        self._save()
            stop_signal = stop_vote.cast(signals.received)
            if stop_signal is not None:
                self._stop_on_signal(stop_signal, saved)
            if self._should_exit():
                self.nonfinite.check(state.iteration)
                if not saved and config.checkpoint.save:
                    self._save()
                logger.info(
                    "exiting at iteration %d on --exit-interval / --exit-duration-in-mins", state.iteration
                )
                self.metrics.close()
                return state
        self.nonfinite.check(state.iteration)
        if self._validates() and not self._evaluation_due():
            self._evaluate(f"the end of training (iteration {state.iteration})")
        if config.checkpoint.save and (
            config.checkpoint.save_interval is None or state.iteration % config.checkpoint.save_interval != 0
        ):
            self._save()
        self.metrics.close()
        return state

    def _validates(self) -> bool:
        """Whether the run has validation data (a finetuning run evaluates its own way, see
        ``megatron.finetuning.trainer``)."""
        return self.valid_batches is not None

    def _evaluation_due(self) -> bool:
        """Whether the iteration just done ends with an evaluation: every --eval-interval iterations."""
        return self._validates() and self.state.iteration % self.config.logging.eval_interval == 0

    def _stop_on_signal(self, name: str, saved: bool) -> None:
        """Every rank gets here after the same iteration: judge it, save (unless this iteration's interval
        save just did) and raise :class:`TrainingInterrupted`."""
        iteration, save_dir = self.state.iteration, self.config.checkpoint.save
        self.nonfinite.check(iteration)
        if save_dir and not saved:
            self._save()
        self.metrics.close()
        where = (
            f"checkpoint saved to {save_dir}: resume with --load {save_dir}"
            if save_dir
            else "no --save was given, so nothing was saved"
        )
        raise TrainingInterrupted(f"stopped on {name} after iteration {iteration}; {where}")

    def _save(self) -> None:
        """Every checkpoint goes through here: the iterations since the last check are judged first (a stop
        saves nothing), and weights holding a NaN or inf are never written."""
        self.nonfinite.check(self.state.iteration)
        ensure_finite_weights(self.engine.module, self.context.device, self.state.iteration)
        save_checkpoint(self.engine, self.config.checkpoint.save, self.state, self.lr_scheduler, self.config)

    def _save_due(self) -> bool:
        checkpoint = self.config.checkpoint
        return bool(
            checkpoint.save
            and checkpoint.save_interval
            and self.state.iteration % checkpoint.save_interval == 0
        )

    def _should_exit(self) -> bool:
        duration = self.config.duration
        if duration.exit_interval and self.state.iteration % duration.exit_interval == 0:
            return True
        if duration.exit_duration_in_mins is not None:
            elapsed_mins = (time.time() - self.start_time) / 60.0
            return any_rank(elapsed_mins > duration.exit_duration_in_mins, self.context.device)
        return False

    def _log_compile_time(self, what: str, seconds: float) -> None:
        """With --torch-compile, how long the first training iteration (or evaluation) of this run took:
        mostly compilation (the evaluation graphs are compiled apart), with CUDA graphs their recording."""
        if self.config.kernels.torch_compile:
            logger.info("torch.compile: the first %s took %.1f s, compilation included", what, seconds)

    def _evaluate(self, where: str) -> None:
        config = self.config
        micro_batches = config.batch.global_batch_size // (
            config.batch.micro_batch_size * config.batch.data_parallel_size
        )
        evaluate_fn = pipeline_evaluate if self.is_pipeline else evaluate
        self._shape_pipeline_for(config.model.seq_length)
        start = time.time()
        loss = all_reduce_mean(
            evaluate_fn(self.engine, self.valid_batches, micro_batches * config.logging.eval_iters)
        )
        if not self._evaluated:
            self._log_compile_time("evaluation", time.time() - start)
            self._evaluated = True
        self.state.consumed_valid_samples += config.logging.eval_iters * config.batch.global_batch_size
        value = loss.item()
        ppl = math.exp(min(20.0, value)) if not math.isnan(value) else value
        logger.info("validation loss at %s | lm loss value: %.6E | lm loss PPL: %.6E |", where, value, ppl)
        state = self.state
        self.metrics.scalars(
            {"lm loss validation": value, "lm loss validation ppl": ppl},
            state.iteration,
            state.consumed_train_samples,
        )
        if config.logging.log_validation_ppl_to_tensorboard:
            self.metrics.tensorboard(
                "lm-loss-validation/lm loss validation ppl",
                ppl,
                state.iteration,
                samples=state.consumed_train_samples,
                tokens=state.consumed_train_tokens,
            )
