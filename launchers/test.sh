#!/usr/bin/env bash
# The test command (README): offline, CPU, quiet DeepSpeed; extra pytest args pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
