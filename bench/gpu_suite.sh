#!/usr/bin/env bash
# One prepared GPU session (H100/H200, no network): throughput before/after + the MRPC accuracy matrix.
# Inputs travel in two git-ignored folders carried with the call:
#   .whl/     py3.12 wheels of what the GPU image lacks (deepspeed, hjson, pydantic(-core), annotated-types,
#             typing-inspection, datasets, dill, multiprocess, fire, termcolor, flufl.lock, atpublic)
#   .devkit/  glue/<TASK>/*.tsv and minilm/ (all-MiniLM-L6-v2 re-saved in fp16, with its tokenizer)
# Results go to $OUT (the device tool brings them back); bench/ scripts write JSON + Markdown there.
#
#   bash bench/gpu_suite.sh                  # throughput before/after + the MRPC matrix (3 seeds)  ~12 min
#   bash bench/gpu_suite.sh sst2-teacher     # SST-2 teacher + cache into runs/gpu_acc              (not yet run)
#   bash bench/gpu_suite.sh sst2-students    # SST-2 KD and Pea-KD, 3 seeds, 6 processes at once    (not yet run)
#   bash bench/gpu_suite.sh matrix           # issue 24: the compute-matched matrix, MRPC + RTE, 3 seeds, paper's
#                                            # epochs (4, PTP 2), 6 processes at once                 (not yet run)
#   bash bench/gpu_suite.sh perf             # issue 16: a,b,c,d eager, then b,c with --compile     ~8 min (not yet run)
#     targets (H100/H200): c/b >= 1.0, c/a >= 8, cache pass (d) >= 15k rows/s; the compiled c vs eager c
#     and its compile time (results.c.compile_s of throughput-cuda-compile.json) are printed at the end
# The two SST-2 calls must follow each other while the machine is warm (runs/ is kept between calls);
# merge the result into the MRPC report here with
#   python bench/accuracy.py --phase report --inputs docs/bench/accuracy-cuda.json,<fetched>/accuracy-cuda-sst2.json
# (it rewrites docs/bench/accuracy-cuda.json with both tasks and re-renders docs/RESULTS.md)
set -uo pipefail
SUITE=${1:-default}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DIST_PEAKD_MINILM_PATH=$PWD/.devkit/minilm DIST_PEAKD_GLUE_DIR=$PWD/.devkit/glue DS_ACCELERATOR=cuda
nvidia-smi -L; python3 -c "import torch, deepspeed, transformers; print(torch.__version__, deepspeed.__version__, transformers.__version__)"
T0=$(date +%s); el() { echo "[gpu_suite] $(( $(date +%s) - T0 )) s: $*"; }
ACC_BUDGET=${ACC_BUDGET:-110}
A2="--device cuda --tasks sst2 --work_dir runs/gpu_acc --ds_config autocast_bf16_zero0 --precision bf16-autocast"
if [ "$SUITE" = sst2-teacher ]; then
  el "SST-2 teacher + cache"
  python3 bench/accuracy.py $A2 --phase teacher > "$OUT/sst2-teacher.log" 2>&1; echo "rc=$?" >> "$OUT/sst2-teacher.log"
  grep -h "eval step\|cached\|Error\|rc=" "$OUT/sst2-teacher.log" | cut -c1-300; el "done"; exit 0
fi
if [ "$SUITE" = sst2-students ]; then
  el "SST-2 students: KD and Pea-KD x seeds 0,1,2, one process each, all at once"
  parts=()
  for s in 0 1 2; do for v in kd peakd; do
    python3 bench/accuracy.py $A2 --phase students --seeds $s --variants $v --out_json runs/gpu_acc/$v$s.json \
      > "runs/gpu_acc/$v$s.log" 2>&1 &
    parts+=("runs/gpu_acc/$v$s.json")
  done; done
  wait
  present=$(for f in "${parts[@]}"; do [ -f "$f" ] && printf '%s,' "$f"; done); present=${present%,}
  python3 bench/accuracy.py $A2 --phase report --inputs "$present" --label "SST-2" \
    --out_md "$OUT/RESULTS-sst2.md" --out_json "$OUT/accuracy-cuda-sst2.json" > "$OUT/sst2-students.log" 2>&1
  for f in runs/gpu_acc/*.log; do echo "== $f"; grep -h "\[accuracy\]\|Error" "$f" | cut -c1-200; done >> "$OUT/sst2-students.log"
  tail -n 30 "$OUT/sst2-students.log"; el "done"; exit 0
fi
if [ "$SUITE" = matrix ]; then
  A3="--device cuda --ds_config autocast_bf16_zero0 --precision bf16-autocast --k 3 --epochs 4 --ptp_epochs 2"
  el "matrix: MRPC and RTE teachers + caches"
  for t in mrpc rte; do
    python3 bench/accuracy.py $A3 --tasks $t --work_dir runs/gpu_matrix/$t --phase teacher \
      > "$OUT/matrix-teacher-$t.log" 2>&1 &
  done
  wait
  el "matrix: the students, one process per (task, seed), budget ${MATRIX_BUDGET:-400} s each"
  parts=()
  for t in mrpc rte; do for s in 0 1 2; do
    python3 bench/accuracy.py $A3 --tasks $t --work_dir runs/gpu_matrix/$t --phase students --seeds $s \
      --variants matrix --time_budget_s "${MATRIX_BUDGET:-400}" --out_json "runs/gpu_matrix/$t-$s.json" \
      > "runs/gpu_matrix/$t-$s.log" 2>&1 &
    parts+=("runs/gpu_matrix/$t-$s.json")
  done; done
  wait
  present=$(for f in "${parts[@]}"; do [ -f "$f" ] && printf '%s,' "$f"; done); present=${present%,}
  python3 bench/accuracy.py $A3 --phase report --inputs "$present" --label "compute-matched matrix, paper's epochs" \
    --out_md "$OUT/RESULTS-matrix.md" --out_json "$OUT/accuracy-cuda-matrix.json" > "$OUT/matrix.log" 2>&1
  for f in runs/gpu_matrix/*.log; do echo "== $f"; grep -h "\[accuracy\]\|Error" "$f" | cut -c1-200; done >> "$OUT/matrix.log"
  tail -n 40 "$OUT/matrix.log"; el "done"; exit 0
fi
if [ "$SUITE" = perf ]; then
  el "issue 16: throughput eager (autocast_bf16_zero0: a, b, c, d)"
  timeout 200 python3 bench/throughput.py --device cuda --ds_config autocast_bf16_zero0 --work_dir /tmp/bw \
    --out_json "$OUT/throughput-cuda-perf.json" --no_markdown > "$OUT/perf.log" 2>&1; echo "rc=$?" >> "$OUT/perf.log"
  tail -n 14 "$OUT/perf.log"
  el "issue 16: b, c with --compile (torch.compile of forward + loss; compile time excluded by the warm-up)"
  timeout 280 python3 bench/throughput.py --device cuda --ds_config autocast_bf16_zero0 --variants c,b --compile \
    --warmup_steps 40 --work_dir /tmp/bw --out_json "$OUT/throughput-cuda-compile.json" --no_markdown \
    >> "$OUT/perf.log" 2>&1; echo "rc=$?" >> "$OUT/perf.log"
  python3 -c "import json, sys; r = json.load(open(sys.argv[1]))['results']; print('compiled c:', r['c'])" \
    "$OUT/throughput-cuda-compile.json"
  tail -n 10 "$OUT/perf.log"; el "done"; exit 0
fi

el "throughput after (autocast_bf16_zero0: a, b, c, d)"
timeout 170 python3 bench/throughput.py --device cuda --ds_config autocast_bf16_zero0 --work_dir /tmp/bw \
  --out_json "$OUT/throughput-cuda-after.json" --no_markdown > "$OUT/throughput.log" 2>&1; echo "rc=$?" >> "$OUT/throughput.log"
tail -n 14 "$OUT/throughput.log"
el "throughput before (DeepSpeed bf16 section, ZeRO-1: c only)"
timeout 80 python3 bench/throughput.py --device cuda --ds_config bf16_zero1 --variants c --work_dir /tmp/bw \
  --out_json "$OUT/throughput-cuda-before.json" --no_markdown >> "$OUT/throughput.log" 2>&1; echo "rc=$?" >> "$OUT/throughput.log"
tail -n 8 "$OUT/throughput.log"

el "accuracy: MRPC teacher + cache"
A="--device cuda --tasks mrpc --work_dir /tmp/acc --ds_config autocast_bf16_zero0 --precision bf16-autocast"
timeout 100 python3 bench/accuracy.py $A --phase teacher > "$OUT/accuracy.log" 2>&1 || echo "teacher phase failed" >> "$OUT/accuracy.log"
el "accuracy: students, three seeds in parallel (budget ${ACC_BUDGET} s each)"
V=peakd,kd,pkd,sps_shuffle_pkd,no_kd,sps_share_pkd,ptp_pkd
for s in 0 1 2; do
  timeout $((ACC_BUDGET + 60)) python3 bench/accuracy.py $A --phase students --seeds $s --variants $V \
    --time_budget_s "$ACC_BUDGET" --out_json /tmp/acc/seed$s.json > /tmp/acc-seed$s.log 2>&1 &
done
wait
el "accuracy: report"
python3 bench/accuracy.py $A --phase report --inputs /tmp/acc/seed0.json,/tmp/acc/seed1.json,/tmp/acc/seed2.json \
  --out_md "$OUT/RESULTS.md" --out_json "$OUT/accuracy-cuda.json" >> "$OUT/accuracy.log" 2>&1
for s in 0 1 2; do echo "== seed $s"; grep -h "\[accuracy\]\|Error\|error" /tmp/acc-seed$s.log | cut -c1-200; done >> "$OUT/accuracy.log"
tail -n 40 "$OUT/accuracy.log"
el "done"
