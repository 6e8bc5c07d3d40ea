#!/usr/bin/env bash
# Installs the toolkit (editable) with its test extras. torch goes first, on its own: a plain "torch"
# requirement on a machine without torch would pull the multi-GB CUDA build even where no GPU exists.
# Override the torch requirement with TORCH_SPEC (e.g. TORCH_SPEC="torch --index-url https://...").
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install ${TORCH_SPEC:-torch==2.13.0}
fi
python3 -m pip install -q -e ".[test]"
