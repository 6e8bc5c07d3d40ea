"""Pick a parallel layout and ds_config for a GPT model on a cluster (the planner: megatron/planning/).

    python tools/plan.py --num-gpus 8 --gpu H100 --num-layers 32 --hidden-size 4096 \
        --num-attention-heads 32 --seq-length 4096 --global-batch-size 1024 --bf16 ... [--write DIR]

Installed, the same is the ``megatron-plan`` command.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.planning.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
