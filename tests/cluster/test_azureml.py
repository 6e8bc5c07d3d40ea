"""AzureML jobs built offline with the SDK v2: each validates with the SDK's own checks, survives a YAML
round trip, and runs command lines that the toolkit's parsers (and config validation) accept."""

from __future__ import annotations

import importlib.util
import re
import shlex

import pytest
import yaml

pytest.importorskip("azure.ai.ml")
from azure.ai.ml import load_job  # noqa: E402

from megatron.cluster import azureml  # noqa: E402
from megatron.config.arguments import parse_args  # noqa: E402
from megatron.config.build import build_config  # noqa: E402
from megatron.config.errors import ConfigError  # noqa: E402
from megatron.config.presets import get_preset  # noqa: E402
from megatron.evaluation.task import add_task_flags  # noqa: E402
from tests.launch import REPO_ROOT  # noqa: E402
from tools import convert_checkpoint_to_hf, preprocess_data  # noqa: E402

_spec = importlib.util.spec_from_file_location("submit", REPO_ROOT / "examples_deepspeed/azureml/submit.py")
submit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(submit)
DATA = "azureml://datastores/workspaceblobstore/paths/gpt/"
TOKENIZER = "azureml://datastores/workspaceblobstore/paths/gpt2-bpe/"
CORPUS = "azureml://datastores/workspaceblobstore/paths/corpus/"
EVAL = "azureml://datastores/workspaceblobstore/paths/wikitext/"
BINDING = re.compile(r"\$\{\{(inputs|outputs)\.(\w+)\}\}")


def without_anonymous_names(node):
    """Inline environments and components load back as anonymous assets (the SDK renames them
    CliV2AnonymousEnvironment / azureml_anonymous and versions them): compare everything else."""
    if isinstance(node, dict):
        return {
            key: without_anonymous_names(value)
            for key, value in node.items()
            if not (key in ("name", "version") and ("build" in node or "command" in node or "image" in node))
        }
    if isinstance(node, list):
        return [without_anonymous_names(value) for value in node]
    return node


def round_trip(job, tmp_path) -> dict:
    """dump -> load_job (the SDK's strictest schema check) -> dump; the two YAMLs must say the same."""
    first, second = tmp_path / "job.yml", tmp_path / "reloaded.yml"
    job.dump(first)
    loaded = load_job(first)
    (loaded._to_job() if hasattr(loaded, "_to_job") else loaded).dump(second)
    before, after = (yaml.safe_load(path.read_text()) for path in (first, second))
    assert without_anonymous_names(after) == without_anonymous_names(before)
    return before


def bound(command: str, tmp_path, ds_config) -> list[str]:
    """The command's words with each ${{inputs.X}} / ${{outputs.X}} replaced by a local folder (an existing
    one for inputs, as AzureML mounts them) and the ds_config input by its file."""

    def local(match: re.Match) -> str:
        if match.group(2) == "ds_config":
            return str(ds_config)
        folder = tmp_path / match.group(1) / match.group(2)
        if match.group(1) == "inputs":
            folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    words = shlex.split(command)
    assert words[0] == "python"
    return [BINDING.sub(local, word) for word in words[1:]]


@pytest.fixture
def ds_config(tmp_path):
    return azureml.write_ds_config(get_preset("gpt-1.3b"), "bf16", tmp_path / "ds")


@pytest.mark.parametrize("distribution", ["pytorch", "mpi"])
def test_pretrain_job_validates_and_round_trips(distribution, tmp_path, ds_config):
    cluster = azureml.ClusterSpec("gpu-a100", instance_count=1, distribution=distribution)
    node = azureml.pretrain_job(
        get_preset("gpt-1.3b"), cluster, azureml.TrainingSpec(), DATA, TOKENIZER, ds_config
    )
    assert node._validate().passed and node.component._validate().passed
    node._to_job()._validate()  # raises on an invalid job
    dumped = round_trip(node._to_job(), tmp_path)
    assert dumped["distribution"] == {"type": distribution, "process_count_per_instance": 8}
    assert dumped["resources"]["instance_count"] == 1 and dumped["compute"] == "azureml:gpu-a100"
    assert dumped["inputs"]["data"] == {"type": "uri_folder", "path": DATA}
    assert dumped["outputs"]["checkpoints"]["mode"] == "rw_mount"
    assert dumped["environment"]["build"]["path"].endswith("examples_deepspeed/azureml/environment")


def test_pretrain_command_passes_config_validation_at_the_job_world_size(tmp_path):
    preset = get_preset("llama2-7b")
    ds_config = azureml.write_ds_config(preset, "bf16", tmp_path / "ds")
    image = "nvcr.io/nvidia/pytorch:25.01-py3"
    cluster = azureml.ClusterSpec("gpu", instance_count=preset.layout.nodes, image=image)
    node = azureml.pretrain_job(preset, cluster, azureml.TrainingSpec(), DATA, TOKENIZER, ds_config)
    entry, *argv = bound(node.command, tmp_path, ds_config)
    assert entry == "pretrain_gpt.py"
    config = build_config(parse_args(argv), cluster.world_size, preset.shape.vocab_size)
    assert config.parallel.tensor_model_parallel_size == preset.layout.tensor_parallel
    assert config.model.kv_heads == 32 and config.model.swiglu
    assert config.checkpoint.save == str(tmp_path / "outputs" / "checkpoints")
    assert round_trip(node._to_job(), tmp_path)["environment"]["image"] == cluster.image


@pytest.mark.parametrize(("name", "distribution"), [("gpt-125m", "mpi"), ("llama2-13b", "pytorch")])
def test_pipeline_validates_round_trips_and_every_step_parses(name, distribution, tmp_path):
    preset = get_preset(name)
    ds_config = azureml.write_ds_config(preset, "bf16", tmp_path / "ds")
    cluster = azureml.ClusterSpec("gpu", preset.layout.nodes, distribution=distribution, image="img:1")
    pipeline = azureml.pipeline_job(
        preset, cluster, azureml.TrainingSpec(), CORPUS, "corpus.jsonl", TOKENIZER, EVAL, ds_config
    )
    result = pipeline._validate()
    assert result.passed, result.error_messages
    dumped = round_trip(pipeline, tmp_path)
    jobs = dumped["jobs"]
    assert set(jobs) == {"preprocess_data", "pretrain", "convert_to_hf", "evaluate"}
    assert jobs["pretrain"]["inputs"]["data"]["path"] == "${{parent.jobs.preprocess_data.outputs.data}}"
    for step in ("convert_to_hf", "evaluate"):
        assert jobs[step]["inputs"]["checkpoints"]["path"] == "${{parent.jobs.pretrain.outputs.checkpoints}}"

    commands = {name: bound(node.command, tmp_path / name, ds_config) for name, node in pipeline.jobs.items()}
    script, *argv = commands["preprocess_data"]
    assert script == "tools/preprocess_data.py" and preprocess_data.parse_args(argv).append_eod
    script, *argv = commands["pretrain"]
    config = build_config(parse_args(argv), cluster.world_size, preset.shape.vocab_size)
    assert str(config.data.data_path).count("inputs/data/corpus_text_document") == 1
    script, *argv = commands["convert_to_hf"]
    assert script == "tools/convert_checkpoint_to_hf.py"
    assert convert_checkpoint_to_hf.parse_args(argv).vocab_size == preset.shape.vocab_size
    script, *argv = commands["evaluate"]
    evaluation = parse_args(argv, add_task_flags)
    assert script == "tasks/main.py" and evaluation.task == "WIKITEXT103"
    tensor = preset.layout.tensor_parallel
    assert evaluation.tensor_model_parallel_size == tensor
    assert jobs["evaluate"]["distribution"]["process_count_per_instance"] == tensor


def test_bad_layouts_fail_before_a_job_exists(ds_config):
    with pytest.raises(ValueError, match="--instance-count 0"):
        azureml.ClusterSpec("gpu", instance_count=0)
    with pytest.raises(ValueError, match="--shm-size lots"):
        azureml.ClusterSpec("gpu", shm_size="lots")
    with pytest.raises(ConfigError):  # 175B's T=8 x P=16 does not fit one node
        azureml.pretrain_job(
            get_preset("gpt-175b"),
            azureml.ClusterSpec("gpu"),
            azureml.TrainingSpec(),
            DATA,
            TOKENIZER,
            ds_config,
        )


@pytest.mark.parametrize("pipeline", [False, True])
def test_submit_dry_run_writes_loadable_yaml(pipeline, tmp_path, capsys):
    argv = ["--preset", "gpt-350m", "--compute", "gpu", "--tokenizer", TOKENIZER, "--dry-run", str(tmp_path)]
    argv += ["--pipeline", "--corpus", CORPUS, "--eval-data", EVAL, "--task", "LAMBADA"] if pipeline else []
    argv += [] if pipeline else ["--data", DATA, "--distribution", "mpi"]
    assert submit.main(argv) == 0
    written = sorted((tmp_path / "megatron-azureml").glob("*.yml"))
    assert len(written) == 1 and str(written[0]) in capsys.readouterr().out
    job = load_job(written[0])
    assert ("evaluate" in job.jobs) if pipeline else (job.distribution.type == "mpi")
    with pytest.raises(SystemExit):  # no workspace named and no --dry-run
        submit.parse_args(
            ["--preset", "gpt-350m", "--compute", "gpu", "--tokenizer", TOKENIZER, "--data", DATA]
        )


@pytest.mark.skipif(importlib.util.find_spec("azureml") is not None, reason="azureml-core installed")
def test_legacy_v1_without_its_extra_names_the_extra():
    with pytest.raises(ImportError, match=r"megatron-ds\[azureml-v1\]"):
        import megatron.cluster.azureml_v1  # noqa: F401


def test_install_check_knows_the_azureml_extras():
    """tools/check_install.py (which decides whether install.sh runs pip) reads the extras from
    pyproject.toml: the test extra's azure-ai-ml counts, and the legacy extra's azureml-core when asked."""
    spec = importlib.util.spec_from_file_location("check_install", REPO_ROOT / "tools" / "check_install.py")
    check_install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_install)
    import tomllib

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(line.startswith("azure-ai-ml") for line in extras["test"])  # what CI installs
    assert not any("azure-ai-ml" in line for line in check_install.unmet_requirements(["test", "azureml"]))
    if importlib.util.find_spec("azureml") is None:
        assert any("azureml-core" in line for line in check_install.unmet_requirements(["azureml-v1"]))
