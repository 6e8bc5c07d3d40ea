#!/usr/bin/env bash
# Installs the toolkit (editable) with the extras given as arguments (e.g. test), into the python3
# first on PATH: use a virtual environment to keep it apart (python3 -m venv .venv && . .venv/bin/activate).
# Does nothing when tools/check_install.py finds everything in place already.
# torch goes first, on its own: a plain "torch" requirement on a machine without torch would pull the
# multi-GB CUDA build even where no GPU exists. Override its requirement with TORCH_SPEC
# (e.g. TORCH_SPEC="torch --index-url https://...").
set -euo pipefail
cd "$(dirname "$0")/.."
if python3 tools/check_install.py "$@" 2>/dev/null; then
  exit 0
fi
if python3 -c 'import sys; sys.exit(sys.prefix != sys.base_prefix)'; then
  echo "installing into $(python3 -c 'import sys; print(sys.prefix)') (no virtual environment active)"
fi
if ! python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install ${TORCH_SPEC:-torch==2.13.0}
fi
# pip 23 (what some Pythons ship) fails to resolve the test extra's azure-ai-ml -> opentelemetry pins
# ("InconsistentCandidate ... opentelemetry-sdk"); pip 25 and newer resolve it.
python3 -m pip install -q "pip>=25"
EXTRAS=$(IFS=,; echo "$*")
python3 -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
