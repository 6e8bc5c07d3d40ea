"""The legacy AzureML SDK v1 path (``azureml-core``, the ``azureml-v1`` extra), as Megatron-DeepSpeed's
``azureml/aml_submit.py`` used it. SDK v1 reached end of support on 2026-06-30: this exists only for
workspaces that cannot move yet, builds the pretraining command job only, and is not tested here (the
package downgrades shared dependencies); use ``megatron.cluster.azureml`` (SDK v2) otherwise.
"""

from __future__ import annotations

import argparse

from megatron.cluster.azureml import REPO_ROOT, ClusterSpec, TrainingSpec, pretrain_argv, write_ds_config
from megatron.config.presets import Preset

try:
    from azureml.core import Environment, Experiment, ScriptRunConfig, Workspace
    from azureml.core.runconfig import DockerConfiguration, MpiConfiguration, PyTorchConfiguration
except ImportError as error:
    raise ImportError(
        "--legacy-v1 needs the out-of-support AzureML SDK v1: pip install 'megatron-ds[azureml-v1]' "
        f"(azureml-core), or drop --legacy-v1 to use the SDK v2. ({error})"
    ) from error


def submit_v1(args: argparse.Namespace, preset: Preset, cluster_args: dict) -> int:
    """Build (and unless ``--dry-run``, submit) the ScriptRunConfig of submit.py's command job."""
    cluster = ClusterSpec(**cluster_args)
    training = TrainingSpec(args.train_samples, args.lr_warmup_samples, args.data_prefix)
    # Inside the snapshot that v1 uploads (a path the .gitignore leaves in).
    ds_config = write_ds_config(preset, training.precision, REPO_ROOT / "examples_deepspeed" / "azureml")
    if cluster.image is None or cluster.image.startswith("azureml:"):
        environment = Environment.from_dockerfile("megatron-ds", str(REPO_ROOT / "examples_deepspeed" /
                                                  "azureml" / "environment" / "Dockerfile"))  # fmt: skip
    else:
        environment = Environment.from_docker_image("megatron-ds", cluster.image)
    per_node = cluster.process_count_per_instance
    distribution = (
        MpiConfiguration(process_count_per_node=per_node, node_count=cluster.instance_count)
        if cluster.distribution == "mpi"
        else PyTorchConfiguration(process_count=cluster.world_size, node_count=cluster.instance_count)
    )
    # SDK v1 mounts no named inputs here: the data and tokenizer are paths the nodes can read.
    bindings = {
        "${{inputs.data}}": args.data, "${{inputs.tokenizer}}": args.tokenizer,
        "${{inputs.ds_config}}": str(ds_config.relative_to(REPO_ROOT)),
        "${{outputs.checkpoints}}": "outputs/checkpoints", "${{outputs.tensorboard}}": "outputs/tensorboard",
    }  # fmt: skip
    arguments = []
    for word in pretrain_argv(preset, training):
        for binding, value in bindings.items():
            word = word.replace(binding, value)
        arguments.append(word)
    run_config = ScriptRunConfig(
        source_directory=str(REPO_ROOT), script=preset.entry_point, arguments=arguments,
        compute_target=cluster.compute, environment=environment, distributed_job_config=distribution,
        docker_runtime_config=DockerConfiguration(use_docker=True, shm_size=cluster.shm_size),
    )  # fmt: skip
    if args.dry_run:
        print(" ".join([preset.entry_point, *arguments]))
        return 0
    workspace = Workspace(args.subscription, args.resource_group, args.workspace)
    run = Experiment(workspace, cluster.experiment_name).submit(run_config)
    print(f"submitted {run.id}: {run.get_portal_url()}")
    return 0
