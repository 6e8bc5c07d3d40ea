#!/usr/bin/env bash
# The test command of README.md and CI: installs what the tests need, then runs the whole suite
# (slow multi-process cases included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh test
export WANDB_MODE=offline WANDB_SILENT=true
python3 -m pytest tests "$@"
