"""Submit a pretraining job, or the preprocess -> pretrain -> convert -> evaluate pipeline, to AzureML
(SDK v2, ``pip install 'megatron-ds[azureml]'``); ``--dry-run DIR`` writes the job's YAML there instead,
offline. The job logic is in ``megatron/cluster/azureml.py``.

    python examples_deepspeed/azureml/submit.py --preset gpt-1.3b --compute gpu-a100 \\
        --data azureml://datastores/workspaceblobstore/paths/gpt/ \\
        --tokenizer azureml://datastores/workspaceblobstore/paths/gpt2-bpe/ \\
        --subscription SUB --resource-group RG --workspace WS
    python examples_deepspeed/azureml/submit.py --pipeline --preset gpt-125m --compute gpu --dry-run out/ ...

``--legacy-v1`` builds the same command job with the SDK v1 (``azureml-core``, out of support since
2026-06-30; ``pip install 'megatron-ds[azureml-v1]'``) for workspaces that still need it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megatron.config.presets import PRESETS, get_preset  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    workspace = parser.add_argument_group("workspace (not needed with --dry-run)")
    workspace.add_argument("--subscription", help="Azure subscription id")
    workspace.add_argument("--resource-group", help="resource group of the workspace")
    workspace.add_argument("--workspace", help="AzureML workspace name")
    job = parser.add_argument_group("job")
    job.add_argument(
        "--preset", required=True, choices=PRESETS, help="model size (megatron/config/presets.py)"
    )
    job.add_argument("--compute", required=True, help="the GPU compute cluster")
    job.add_argument("--instance-count", type=int, help="nodes (default: the preset's)")
    job.add_argument("--processes-per-instance", type=int, default=8, help="processes (GPUs) per node")
    job.add_argument("--distribution", choices=["pytorch", "mpi"], default="pytorch")
    job.add_argument(
        "--image", help="docker image or azureml:ENV@VERSION (default: build environment/Dockerfile)"
    )
    job.add_argument("--shm-size", default="64g")
    job.add_argument("--data", help="folder of the preprocessed data (PREFIX_text_document.bin/.idx)")
    job.add_argument("--data-prefix", default="corpus_text_document", help="the file prefix inside --data")
    job.add_argument("--tokenizer", required=True, help="folder of the tokenizer files")
    job.add_argument("--train-samples", type=int, default=146_484_375)
    job.add_argument("--lr-warmup-samples", type=int, default=183_105)
    pipeline = parser.add_argument_group("pipeline")
    pipeline.add_argument(
        "--pipeline", action="store_true", help="preprocess -> pretrain -> convert + evaluate"
    )
    pipeline.add_argument("--corpus", help="folder of the JSON-lines corpus")
    pipeline.add_argument("--corpus-file", default="corpus.jsonl", help="the file inside --corpus")
    pipeline.add_argument("--eval-data", help="folder with wiki.test.tokens or lambada_test.jsonl")
    pipeline.add_argument("--task", choices=["WIKITEXT103", "LAMBADA"], default="WIKITEXT103")
    pipeline.add_argument("--cpu-compute", help="compute for the one-process steps (default: --compute)")
    parser.add_argument("--dry-run", metavar="DIR", help="write the job's YAML and ds_config to DIR, offline")
    parser.add_argument("--legacy-v1", action="store_true", help="SDK v1 (azureml-core, out of support)")
    args = parser.parse_args(argv)
    needed = ["--corpus", "--eval-data"] if args.pipeline else ["--data"]
    if not args.dry_run:
        needed += ["--subscription", "--resource-group", "--workspace"]
    missing = [flag for flag in needed if getattr(args, flag[2:].replace("-", "_")) is None]
    if missing:
        parser.error(f"{', '.join(missing)} required here")
    if args.legacy_v1 and args.pipeline:
        parser.error("--legacy-v1 builds the pretraining command job only; drop --pipeline or --legacy-v1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = get_preset(args.preset)
    out = Path(args.dry_run or os.environ.get("TMPDIR", "/tmp")) / "megatron-azureml"
    cluster_args = dict(
        compute=args.compute, instance_count=args.instance_count or preset.layout.nodes,
        process_count_per_instance=args.processes_per_instance, distribution=args.distribution,
        image=args.image, shm_size=args.shm_size,
    )  # fmt: skip
    if args.legacy_v1:
        from megatron.cluster.azureml_v1 import submit_v1

        return submit_v1(args, preset, cluster_args)
    from megatron.cluster import azureml

    cluster = azureml.ClusterSpec(**cluster_args)
    training = azureml.TrainingSpec(args.train_samples, args.lr_warmup_samples, args.data_prefix)
    ds_config = azureml.write_ds_config(preset, training.precision, out)
    if args.pipeline:
        job = azureml.pipeline_job(
            preset, cluster, training, args.corpus, args.corpus_file, args.tokenizer, args.eval_data,
            ds_config, args.task, args.cpu_compute,
        )  # fmt: skip
    else:
        job = azureml.pretrain_job(preset, cluster, training, args.data, args.tokenizer, ds_config)._to_job()
    if args.dry_run:
        path = out / f"{job.name or preset.name}.yml"
        job.dump(path)
        print(f"wrote {path} and {ds_config}")
        return 0
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    client = MLClient(DefaultAzureCredential(), args.subscription, args.resource_group, args.workspace)
    submitted = client.jobs.create_or_update(job)
    print(f"submitted {submitted.name}: {submitted.studio_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
