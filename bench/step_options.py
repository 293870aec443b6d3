"""What-if timings for the phase-2 options of issue 16, on the product's own student, loss and data code.

    python bench/step_options.py --work_dir /tmp/dpk-host-before          # a bench/host_overhead.py work dir
    python bench/step_options.py --work_dir ... --compile                   # also torch.compile (takes minutes)

One process, no DeepSpeed: the product's SPS student (k=2 shuffle, the tiny shape), its
``distillation_loss``, its collator, sampler and teacher cache, SST-2 batches of 128 in the product's
order. Each variant changes one thing against ``baseline`` (the product's step without the engine);
the variants run in interleaved rounds (so a change in the machine's load hits all of them) and the
median ms per step is reported. The gains are what each option would save in the engine/trainer;
``no dropout`` is not an option (it changes the method), it shows what dropout's RNG costs here.
Results: JSON in docs/bench/step-options.json (no Markdown; docs/BENCHMARKS.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

VARIANTS = {
    "baseline": {},
    "columnar data (TokenColumns.gather)": {"columnar": True},
    "fused AdamW": {"fused": True},
    "foreach grad clip": {"clip_foreach": True},
    "all three": {"columnar": True, "fused": True, "clip_foreach": True},
    "no dropout (not an option: cost of dropout)": {"no_dropout": True},
}


def build(args: argparse.Namespace, work: Path, variant: dict):
    import torch

    from dist_peakd.cache import TeacherCache
    from dist_peakd.config import RunOptions
    from dist_peakd.data import DynamicPaddingCollator, LengthGroupedBatchSampler
    from dist_peakd.data.collate import TokenColumns
    from dist_peakd.data.rows import fetch_rows
    from dist_peakd.distill import DistillLossConfig, distillation_loss, patient_layer_map
    from dist_peakd.engine.optim import linear_warmup_decay, param_groups
    from dist_peakd.models import build_student
    from dist_peakd.stages.common import load_tokenizer, prepare_data

    runs = next(work.glob("runs-*"))
    tok = load_tokenizer(str(work / "backbone"))
    data = prepare_data(RunOptions(task="sst2", glue_dir=args.glue_dir, max_length=64, output_dir=str(runs)), tok)
    cache = TeacherCache.open(runs / "sst2" / "teacher_cache", verify="size").split("train")
    collate = DynamicPaddingCollator(tok.pad_token_id, pad_to_multiple_of=8 if variant.get("pad8") else None)
    columns = TokenColumns.from_dataset(data.train)
    batches = LengthGroupedBatchSampler(list(data.train["length"]), 128, seed=0).global_batches(0)
    torch.manual_seed(0)
    model = build_student(str(work / "backbone"), k=2, variant="shuffle", num_labels=2).train()
    if variant.get("no_dropout"):
        for mod in model.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=2e-5, **({"fused": True} if variant.get("fused") else {}))
    sched = linear_warmup_decay(opt, len(batches), 0.1)
    cfg, layer_map = DistillLossConfig(), patient_layer_map(4, 4)

    def forward_loss(ids, mask, types, t_logits, t_cls, labels):
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        return distillation_loss(out.logits, out.cls_states, t_logits, t_cls, labels, layer_map, cfg).total

    fwd = torch.compile(forward_loss, dynamic=True) if variant.get("compile") else forward_loss
    state = {"i": 0}

    def step() -> None:
        idx = batches[state["i"] % len(batches)]
        state["i"] += 1
        batch = collate.gather(columns, idx) if variant.get("columnar") else collate(fetch_rows(data.train, idx))
        t_logits, t_cls = cache.lookup(batch["example_ids"].numpy())
        loss = fwd(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], t_logits, t_cls,
                   batch["labels"])
        (loss / len(idx)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0,
                                       **({"foreach": True} if variant.get("clip_foreach") else {}))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return step


def cache_scan(args: argparse.Namespace, work: Path) -> dict:
    """Teacher pass rows/s over SST-2 train (length-sorted, the product's collator and teacher_forward)
    for several inference batch sizes, under no_grad (the stage) and inference_mode."""
    import numpy as np
    import torch

    from dist_peakd.config import RunOptions
    from dist_peakd.data import DynamicPaddingCollator
    from dist_peakd.data.collate import TokenColumns
    from dist_peakd.models import load_teacher, teacher_forward
    from dist_peakd.stages.common import load_tokenizer, prepare_data

    runs = next(work.glob("runs-*"))
    tok = load_tokenizer(str(work / "teacher"))
    train = prepare_data(RunOptions(task="sst2", glue_dir=args.glue_dir, max_length=64, output_dir=str(runs)),
                         tok).train
    columns, collate = TokenColumns.from_dataset(train), DynamicPaddingCollator(tok.pad_token_id)
    order = np.argsort(-columns.lengths, kind="stable")
    teacher = load_teacher(work / "teacher", num_labels=2).eval()
    out = {}
    for bs in (256, 1024, 4096):
        for mode, ctx in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
            t0 = time.perf_counter()
            with ctx():
                for i in range(0, len(order), bs):
                    b = collate.gather(columns, order[i:i + bs])
                    o = teacher_forward(teacher, b["input_ids"], b["attention_mask"], b["token_type_ids"])
                    o.logits.float().numpy(), torch.stack(o.cls_states, dim=1).half().numpy()
            out[f"batch {bs}, {mode}"] = len(order) / (time.perf_counter() - t0)
            print(f"[step-options] cache pass batch {bs} {mode}: {out[f'batch {bs}, {mode}']:.0f} rows/s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", required=True, help="work dir of a bench/host_overhead.py run (backbone + cache)")
    p.add_argument("--glue_dir", default=str(REPO.parent / "shared" / "glue"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--compile", action="store_true", help="add torch.compile variants (minutes of compilation)")
    p.add_argument("--cache_scan", action="store_true", help="also the teacher pass at several batch sizes")
    p.add_argument("--out_json", default=str(REPO / "docs" / "bench" / "step-options.json"))
    args = p.parse_args()
    import torch

    variants = dict(VARIANTS)
    if args.compile:
        variants["pad to multiples of 8 (eager)"] = {"pad8": True}
        variants["torch.compile fwd+loss (dynamic, pad 8) + all three"] = {
            "compile": True, "pad8": True, "columnar": True, "fused": True, "clip_foreach": True}
    steps, warm_s = {}, {}
    for name, v in variants.items():
        steps[name] = build(args, Path(args.work_dir), v)
        t0 = time.perf_counter()
        for _ in range(100 if v.get("compile") else 5):  # compile: every padded length seen once
            steps[name]()
        warm_s[name] = round(time.perf_counter() - t0, 1)
        print(f"[step-options] {name}: warm-up {warm_s[name]} s", flush=True)
    times: dict[str, list[float]] = {n: [] for n in variants}
    loads = []
    for _ in range(args.rounds):
        loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append(1000 * (time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["baseline"])
    result = {"torch_threads": torch.get_num_threads(), "rounds": args.rounds, "steps_per_round": args.steps,
              "loadavg_per_round": loads, "warmup_s": warm_s,
              "ms_per_step": {n: statistics.median(t) for n, t in times.items()},
              "saved_ms_vs_baseline": {n: base - statistics.median(t) for n, t in times.items()},
              "all_rounds_ms": times}
    if args.cache_scan:
        result["cache_pass_rows_per_s"] = cache_scan(args, Path(args.work_dir))
    Path(args.out_json).write_text(json.dumps(result, indent=2))
    for n in variants:
        print(f"{n:55s} {result['ms_per_step'][n]:8.2f} ms/step  saved {result['saved_ms_vs_baseline'][n]:+7.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
