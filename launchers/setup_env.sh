#!/usr/bin/env bash
# Create .venv (if missing) and install dist-peakd with its dev extras.
# On machines without a GPU, torch 2.13.0 is installed first: on these CPU machines it resolves to a
# local CPU build (a plain `pip install torch` would pull a multi-GB CUDA build). On a GPU machine
# keep your CUDA torch: set DIST_PEAKD_TORCH_SPEC="" to skip this step, or to another spec.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if command -v nvidia-smi >/dev/null 2>&1; then default_torch=""; else default_torch="torch==2.13.0"; fi
TORCH_SPEC=${DIST_PEAKD_TORCH_SPEC-$default_torch}
if [ -n "$TORCH_SPEC" ] && ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
fi
.venv/bin/python -m pip install -q -e ".[dev,plots,deploy]"
.venv/bin/python -c "import torch, deepspeed, transformers, datasets; print('env ok: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| transformers', transformers.__version__)" 2>/dev/null
