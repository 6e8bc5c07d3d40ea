"""Azure Machine Learning jobs with the SDK v2 (``azure-ai-ml``, the ``azureml`` extra): a command job that
pretrains a model preset, and a pipeline job preprocess -> pretrain -> convert to HF + evaluate.

Everything here builds jobs offline (no workspace, no credentials); ``examples_deepspeed/azureml/submit.py``
submits them or dumps their YAML. AzureML starts the processes itself: with the PyTorch distribution it
sets ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` on each of
``instance_count x process_count_per_instance`` processes; with the MPI distribution it runs them under
``mpirun``, which sets ``OMPI_COMM_WORLD_*`` (and ``AZ_BATCH_MASTER_NODE`` / ``AZ_BATCHAI_MPI_MASTER_NODE``
for the head node), from which the toolkit finds its rank. So the job's command is the entry point itself,
never a launcher. Counts the SDK does not check (instance count, shm size) are checked in
:class:`ClusterSpec`, and the training flags pass ``build_config`` at the job's world size before a job
exists, so a bad layout fails here rather than on the cluster.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megatron.config.arguments import parse_args
from megatron.config.build import build_config
from megatron.config.presets import TOKENIZER_TYPES, Preset

try:
    from azure.ai.ml import Input, MpiDistribution, Output, PyTorchDistribution, command, dsl
    from azure.ai.ml.entities import BuildContext, Command, Environment, PipelineJob
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        "megatron.cluster.azureml needs the Azure ML SDK v2: pip install 'megatron-ds[azureml]' "
        f"(azure-ai-ml). ({error})"
    ) from error

logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)  # its "experimental class" lines

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE_DIR = REPO_ROOT / "examples_deepspeed" / "azureml" / "environment"
EVAL_FILES = {"WIKITEXT103": "wiki.test.tokens", "LAMBADA": "lambada_test.jsonl"}
_SHM_SIZE = re.compile(r"^\d+[bkmg]$")


@dataclass(frozen=True)
class ClusterSpec:
    """Where and how a job runs. ``image``: a docker image, ``azureml:NAME@VERSION`` or
    ``azureml:NAME:VERSION`` (a registered or curated environment) or ``azureml://registries/...``;
    None builds ``examples_deepspeed/azureml/environment/Dockerfile``."""

    compute: str
    instance_count: int = 1
    process_count_per_instance: int = 8
    distribution: Literal["pytorch", "mpi"] = "pytorch"
    image: str | None = None
    shm_size: str = "64g"
    experiment_name: str = "megatron-ds"

    def __post_init__(self) -> None:
        if not self.compute:
            raise ValueError("--compute: name the workspace's compute cluster (az ml compute list).")
        for flag, value in (
            ("--instance-count", self.instance_count),
            ("--processes-per-instance", self.process_count_per_instance),
        ):
            if value < 1:
                raise ValueError(f"{flag} {value}: must be >= 1.")
        if self.distribution not in ("pytorch", "mpi"):
            raise ValueError(f"--distribution {self.distribution}: use pytorch or mpi.")
        if not _SHM_SIZE.match(self.shm_size):
            raise ValueError(f"--shm-size {self.shm_size}: give a number and a unit b, k, m or g (e.g. 64g).")

    @property
    def world_size(self) -> int:
        return self.instance_count * self.process_count_per_instance


@dataclass(frozen=True)
class TrainingSpec:
    """The run beyond the preset: duration, precision and any extra ``pretrain_*.py`` flags (they come last,
    so they override the preset's)."""

    train_samples: int = 146_484_375  # GPT-3's 300B tokens in 2048-token samples
    lr_warmup_samples: int = 183_105
    data_prefix: str = "corpus_text_document"  # the file prefix inside the data input
    precision: Literal["bf16", "fp16"] = "bf16"
    save_interval: int = 1000
    extra_flags: tuple[str, ...] = field(default_factory=tuple)


def environment(cluster: ClusterSpec) -> Environment | str:
    if cluster.image is None:
        return Environment(build=BuildContext(path=str(DOCKERFILE_DIR)))  # anonymous: registered by content
    if cluster.image.startswith("azureml:"):
        return cluster.image  # a registered environment (the SDK resolves it on submission)
    return Environment(image=cluster.image)


def ds_config(preset: Preset, precision: str) -> dict:
    """The ds_config of a preset's layout (``write_ds_config`` puts it where a job input can take it)."""
    layout = preset.layout
    section = {"enabled": True} if precision == "bf16" else {"enabled": True, "loss_scale": 0}
    return {
        "train_batch_size": layout.global_batch_size,
        "train_micro_batch_size_per_gpu": layout.micro_batch_size,
        "steps_per_print": 10,
        "zero_optimization": {"stage": layout.zero_stage},
        "gradient_clipping": 1.0,
        precision: section,
    }


def write_ds_config(preset: Preset, precision: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ds_config_{preset.name}.json"
    path.write_text(json.dumps(ds_config(preset, precision), indent=2) + "\n")
    return path


def tokenizer_flags(preset: Preset, folder: str) -> list[str]:
    """The tokenizer files inside a tokenizer folder input: GPT-2's vocab.json and merges.txt, LLaMA's
    tokenizer.model, BERT's vocab.txt."""
    family = preset.shape.family
    files = {
        "gpt": ["--vocab-file", f"{folder}/vocab.json", "--merge-file", f"{folder}/merges.txt"],
        "llama": ["--tokenizer-model", f"{folder}/tokenizer.model"],
        "bert": ["--vocab-file", f"{folder}/vocab.txt"],
    }[family]
    return ["--tokenizer-type", TOKENIZER_TYPES[family], *files]


def pretrain_argv(preset: Preset, training: TrainingSpec) -> list[str]:
    """The entry point's flags, with the job's inputs and outputs as AzureML binds them."""
    return [
        *preset.flags(), *([] if preset.layout.pipeline_parallel > 1 else ["--no-pipeline-parallel"]),
        "--train-samples", str(training.train_samples),
        "--lr-warmup-samples", str(training.lr_warmup_samples), "--lr-decay-style", "cosine",
        "--weight-decay", "0.1", "--clip-grad", "1.0", f"--{training.precision}",
        "--recompute-granularity", "full", "--recompute-method", "uniform",
        "--data-path", f"${{{{inputs.data}}}}/{training.data_prefix}", "--split", "949,50,1",
        *tokenizer_flags(preset, "${{inputs.tokenizer}}"),
        "--save", "${{outputs.checkpoints}}", "--load", "${{outputs.checkpoints}}",
        "--save-interval", str(training.save_interval), "--tensorboard-dir", "${{outputs.tensorboard}}",
        "--log-interval", "10", "--eval-interval", "1000", "--eval-iters", "10",
        "--deepspeed", "--deepspeed_config", "${{inputs.ds_config}}", *training.extra_flags,
    ]  # fmt: skip


def check_pretrain_argv(argv: list[str], preset: Preset, world_size: int, ds_config_path: Path) -> None:
    """``build_config`` on the job's flags at its world size (the ds_config input read from its local file),
    so a layout that does not fit the job's processes fails before submission."""
    local = [str(ds_config_path) if word == "${{inputs.ds_config}}" else word for word in argv]
    model_type = "bert" if preset.shape.family == "bert" else "gpt"
    build_config(parse_args(local), world_size, preset.shape.vocab_size, model_type)


def _distribution(cluster: ClusterSpec):
    if cluster.distribution == "mpi":
        return MpiDistribution(process_count_per_instance=cluster.process_count_per_instance)
    return PyTorchDistribution(process_count_per_instance=cluster.process_count_per_instance)


def _command_line(script: str, argv: list[str]) -> str:
    """AzureML runs the command through a shell; ``${{...}}`` bindings must stay unquoted."""
    return " ".join(["python", script, *(_quote(word) for word in argv)])


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[\w@%+=:,./${}-]+", word) else "'" + word.replace("'", "'\"'\"'") + "'"


def pretrain_job(
    preset: Preset,
    cluster: ClusterSpec,
    training: TrainingSpec,
    data: str,
    tokenizer: str,
    ds_config_path: Path,
) -> Command:
    """The command job: ``data`` and ``tokenizer`` are folders (``azureml://datastores/...`` URIs, or local
    folders that submission uploads), the checkpoints and tensorboard events its outputs."""
    argv = pretrain_argv(preset, training)
    check_pretrain_argv(argv, preset, cluster.world_size, ds_config_path)
    return command(
        name=f"pretrain_{preset.name.replace('-', '_').replace('.', '_')}",
        display_name=f"pretrain {preset.name}",
        description=f"{preset.entry_point} with the {preset.name} preset on {cluster.world_size} processes",
        experiment_name=cluster.experiment_name,
        code=str(REPO_ROOT),
        command=_command_line(preset.entry_point, argv),
        inputs={
            "data": Input(type="uri_folder", path=data),
            "tokenizer": Input(type="uri_folder", path=tokenizer),
            "ds_config": Input(type="uri_file", path=str(ds_config_path)),
        },
        outputs={
            "checkpoints": Output(type="uri_folder", mode="rw_mount"),
            "tensorboard": Output(type="uri_folder", mode="rw_mount"),
        },
        environment=environment(cluster),
        compute=cluster.compute,
        instance_count=cluster.instance_count,
        distribution=_distribution(cluster),
        shm_size=cluster.shm_size,
    )


def preprocess_argv(preset: Preset, corpus_file: str, workers: int = 16) -> list[str]:
    return [
        "--input", f"${{{{inputs.corpus}}}}/{corpus_file}", "--json-keys", "text",
        "--output-prefix", "${{outputs.data}}/corpus", *tokenizer_flags(preset, "${{inputs.tokenizer}}"),
        "--append-eod", "--workers", str(workers),
    ]  # fmt: skip


def convert_argv(preset: Preset) -> list[str]:
    return [
        "--load-dir", "${{inputs.checkpoints}}", "--save-dir", "${{outputs.hf_model}}/model",
        "--vocab-size", str(preset.shape.vocab_size),
    ]  # fmt: skip


def evaluate_argv(preset: Preset, task: str) -> list[str]:
    argv = ["--task", task, "--valid-data", f"${{{{inputs.eval_data}}}}/{EVAL_FILES[task]}"]
    argv += ["--load", "${{inputs.checkpoints}}", "--micro-batch-size", "8"]
    argv += tokenizer_flags(preset, "${{inputs.tokenizer}}")
    argv += ["--tensor-model-parallel-size", str(preset.layout.tensor_parallel)]
    return argv + (["--overlapping-eval", "32"] if task == "WIKITEXT103" else ["--strict-lambada"])


def pipeline_job(
    preset: Preset,
    cluster: ClusterSpec,
    training: TrainingSpec,
    corpus: str,
    corpus_file: str,
    tokenizer: str,
    eval_data: str,
    ds_config_path: Path,
    task: str = "WIKITEXT103",
    cpu_compute: str | None = None,
) -> PipelineJob:
    """preprocess_data (JSON lines -> .bin/.idx) -> pretrain -> convert to HF and evaluate (tasks/main.py,
    on the training checkpoint, beside the conversion, T processes on one node of the training cluster).
    ``cpu_compute`` runs preprocessing and conversion (default: the training cluster, one instance)."""
    if preset.shape.family == "bert":
        raise ValueError(
            f"--preset {preset.name}: the pipeline's evaluation tasks are GPT's; use a GPT preset."
        )
    if task not in EVAL_FILES:
        raise ValueError(f"--task {task}: use one of {', '.join(EVAL_FILES)}.")
    env, code = environment(cluster), str(REPO_ROOT)
    single = {"code": code, "environment": env, "compute": cpu_compute or cluster.compute}
    preprocess = command(
        name="preprocess_data", display_name="preprocess_data", **single,
        command=_command_line("tools/preprocess_data.py", preprocess_argv(preset, corpus_file)),
        inputs={"corpus": Input(type="uri_folder"), "tokenizer": Input(type="uri_folder")},
        outputs={"data": Output(type="uri_folder")},
    )  # fmt: skip
    pretrain = pretrain_job(preset, cluster, training, corpus, tokenizer, ds_config_path)
    convert = command(
        name="convert_to_hf", display_name="convert_checkpoint_to_hf", **single,
        command=_command_line("tools/convert_checkpoint_to_hf.py", convert_argv(preset)),
        inputs={"checkpoints": Input(type="uri_folder")}, outputs={"hf_model": Output(type="uri_folder")},
    )  # fmt: skip
    # On one GPU node, the model split over T processes as in training (AzureML starts them).
    tensor = preset.layout.tensor_parallel
    evaluate = command(
        name="evaluate", display_name=f"evaluate {task}", code=code, environment=env, compute=cluster.compute,
        shm_size=cluster.shm_size, distribution=PyTorchDistribution(process_count_per_instance=tensor),
        command=_command_line("tasks/main.py", evaluate_argv(preset, task)),
        inputs={k: Input(type="uri_folder") for k in ("checkpoints", "tokenizer", "eval_data")},
    )  # fmt: skip

    @dsl.pipeline(
        name=f"megatron_{preset.name.replace('-', '_').replace('.', '_')}",
        description=f"{preset.name}: preprocess, pretrain, convert to HF, evaluate {task}",
        compute=cluster.compute,
        experiment_name=cluster.experiment_name,
    )
    def megatron_pipeline(corpus_folder, tokenizer_folder, eval_folder):  # typed by the Inputs passed
        data = preprocess(corpus=corpus_folder, tokenizer=tokenizer_folder)
        trained = pretrain(data=data.outputs.data, tokenizer=tokenizer_folder)
        hf = convert(checkpoints=trained.outputs.checkpoints)
        scores = evaluate(
            checkpoints=trained.outputs.checkpoints, tokenizer=tokenizer_folder, eval_data=eval_folder
        )
        # Node names default to these variables' names: give them the steps' names instead.
        for node, name in (
            (data, "preprocess_data"),
            (trained, "pretrain"),
            (hf, "convert_to_hf"),
            (scores, "evaluate"),
        ):
            node.name = name
        return {"checkpoints": trained.outputs.checkpoints, "hf_model": hf.outputs.hf_model}

    return megatron_pipeline(
        corpus_folder=Input(type="uri_folder", path=corpus),
        tokenizer_folder=Input(type="uri_folder", path=tokenizer),
        eval_folder=Input(type="uri_folder", path=eval_data),
    )
