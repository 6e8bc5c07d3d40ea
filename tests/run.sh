#!/usr/bin/env bash
# The test command of README.md and CI: installs what the tests need, then runs the whole suite
# (slow multi-process cases included) on TEST_WORKERS pytest-xdist workers (2 by default; 0: in this
# process), a test file per worker at a time (README.md, Tests). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh test
export WANDB_MODE=offline WANDB_SILENT=true
python3 -m pytest tests -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
