"""The plain-PyTorch arms of bench/host_overhead.py: the same distill work and cache pass, no engine.

Data preparation (tokenization, pre-padding into one array, reading the teacher cache into memory) is
done once before the timed loop; every step then does what a plain loop has to: slice the batch, build
the mask, gather the teacher rows, forward, loss, backward, clip, AdamW, schedule, and a host sync only
on logging steps. Each phase is timed (CPU: every op is synchronous, so the timers are exact).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PHASES = ("data fetch", "collate", "cache lookup", "host-to-device", "forward", "loss", "backward",
          "optimizer (clip + AdamW + schedule + zero_grad)", "logging / sync")


def run_parent(args: Any, python: str, work: Path, backbone: Path, cache_dir: Path) -> dict:
    out = work / "plain-result.json"
    cmd = [python, str(Path(__file__).with_name("host_overhead.py")), "--plain_result", str(out),
           "--work_dir", str(work), "--glue_dir", args.glue_dir, "--batch_size", str(args.batch_size),
           "--max_length", str(args.max_length), "--warmup_windows", str(args.warmup_windows),
           "--windows", str(args.windows), "--window_steps", str(args.window_steps),
           "--ops_steps", str(args.ops_steps), "--label", str(cache_dir)]
    if args.cache_batch_size:
        cmd += ["--cache_batch_size", str(args.cache_batch_size)]
    from bench.host_overhead import loadavg

    before, t0 = loadavg(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)  # inherits OMP_NUM_THREADS if set
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"plain arm failed (exit {proc.returncode})")
    print(f"[bench] plain: done in {time.perf_counter() - t0:.1f} s", flush=True)
    return json.loads(out.read_text()) | {"loadavg_before": before, "loadavg_after": loadavg(),
                                          "wall_s": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------------------------- child
def load_rows(args: Any, cache_dir: Path) -> dict:
    """Tokenized SST-2 train + dev (the product's tokenization and token cache), pre-padded arrays."""
    import numpy as np
    from transformers import AutoTokenizer

    from dist_peakd.config import RunOptions
    from dist_peakd.stages.common import prepare_data

    work = Path(args.work_dir)
    tok = AutoTokenizer.from_pretrained(str(work / "backbone"))
    opts = RunOptions(task="sst2", glue_dir=args.glue_dir, max_length=args.max_length,
                      output_dir=str(cache_dir.parents[1]))
    data = prepare_data(opts, tok)
    out = {}
    for name, ds in (("train", data.train), ("dev", data.dev)):
        lengths = np.asarray(ds["length"], dtype=np.int64)
        tokens = np.zeros((len(ds), args.max_length), dtype=np.int64)
        types = np.zeros_like(tokens)
        for i, (ids, tt) in enumerate(zip(ds["input_ids"], ds["token_type_ids"], strict=True)):
            tokens[i, :len(ids)] = ids
            types[i, :len(tt)] = tt
        out[name] = {"tokens": tokens, "types": types, "lengths": lengths,
                     "labels": np.asarray(ds["label"], dtype=np.int64), "ids": np.asarray(ds["idx"], dtype=np.int64)}
    return out


def load_cache(cache_dir: Path) -> tuple[Any, Any, Any]:
    """The whole train split of the teacher cache in memory: (row of id, logits, cls) as tensors."""
    import numpy as np
    import torch

    manifest = json.loads((cache_dir / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    ids = np.concatenate([np.load(cache_dir / s["path"] / "ids.npy") for s in shards])
    logits = np.concatenate([np.load(cache_dir / s["path"] / "logits.npy") for s in shards])
    cls = np.concatenate([np.load(cache_dir / s["path"] / "cls.npy") for s in shards])
    row_of = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    row_of[ids] = np.arange(len(ids))
    return torch.from_numpy(row_of), torch.from_numpy(logits), torch.from_numpy(cls)


def build_student(backbone: Path) -> Any:
    """HF BertModel with 2 parameter layers run as 4 (layers 0,1,0,1) + dropout + linear head."""
    import torch
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(backbone), add_pooling_layer=True)
    first = bert.encoder.layer
    bert.encoder.layer = torch.nn.ModuleList([first[0], first[1], first[0], first[1]])
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(bert.config.hidden_size, 2))
    return torch.nn.ModuleDict({"bert": bert, "head": head}).train()


def plain_loss(logits: Any, cls: Any, t_logits: Any, t_cls: Any, labels: Any) -> Any:
    """Mean over the batch of 0.7*T^2*KL + 0.3*CE + 100*PT with T = 10, layers (1,1), (2,2), (3,3)."""
    import torch.nn.functional as F

    t = 10.0
    log_ps, log_pt = F.log_softmax(logits / t, dim=-1), F.log_softmax(t_logits.float() / t, dim=-1)
    kd = (log_pt.exp() * (log_pt - log_ps)).sum(-1) * (t * t)
    ce = F.cross_entropy(logits, labels, reduction="none")
    hs, ht = cls[:, :3], t_cls[:, :3].float()
    pt = (F.normalize(ht, dim=-1, eps=1e-12) - F.normalize(hs, dim=-1, eps=1e-12)).pow(2).mean(dim=(1, 2))
    return (0.7 * kd + 0.3 * ce + 100.0 * pt).mean()


def distill_loop(args: Any, rows: dict, cache: tuple) -> dict:
    import numpy as np
    import torch

    from dist_peakd.data import LengthGroupedBatchSampler

    tr = rows["train"]
    row_of, c_logits, c_cls = cache
    batches = LengthGroupedBatchSampler(tr["lengths"].tolist(), args.batch_size, seed=0).global_batches(0)
    model = build_student(Path(args.work_dir) / "backbone")
    decay = [p for n, p in model.named_parameters() if not any(k in n for k in ("bias", "LayerNorm"))]
    no_decay = [p for n, p in model.named_parameters() if any(k in n for k in ("bias", "LayerNorm"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=2e-5)
    total = len(batches)
    warm = max(1, round(0.1 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    device = torch.device("cpu")
    warm_steps = args.warmup_windows * args.window_steps
    timed_steps = args.windows * args.window_steps
    phase = {k: 0.0 for k in PHASES}
    stamps, losses, running = [], [], torch.zeros(())
    prof = None
    for step, batch in enumerate(batches[:warm_steps + timed_steps + args.ops_steps]):
        if step == warm_steps + timed_steps:
            stamps.append(time.perf_counter())
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            prof.__enter__()
        t = [time.perf_counter()]
        if warm_steps <= step < warm_steps + timed_steps and step % args.window_steps == 0:
            stamps.append(t[0])
        idx = np.asarray(batch)
        seq = int(tr["lengths"][idx].max())
        tokens, types, lens = tr["tokens"][idx, :seq], tr["types"][idx, :seq], tr["lengths"][idx]
        t.append(time.perf_counter())
        input_ids, token_type_ids = torch.from_numpy(tokens), torch.from_numpy(types)
        attention_mask = (torch.arange(seq)[None, :] < torch.from_numpy(lens)[:, None]).long()
        labels, example_ids = torch.from_numpy(tr["labels"][idx]), torch.from_numpy(tr["ids"][idx])
        t.append(time.perf_counter())
        r = row_of[example_ids]
        t_logits, t_cls = c_logits[r], c_cls[r]
        t.append(time.perf_counter())
        input_ids, token_type_ids, attention_mask, labels, t_logits, t_cls = (
            x.to(device, non_blocking=True) for x in (input_ids, token_type_ids, attention_mask, labels,
                                                       t_logits, t_cls))
        t.append(time.perf_counter())
        out = model["bert"](input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            output_hidden_states=True)
        logits = model["head"](out.pooler_output)
        cls = torch.stack([h[:, 0] for h in out.hidden_states[1:]], dim=1)
        t.append(time.perf_counter())
        loss = plain_loss(logits, cls, t_logits, t_cls, labels)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        running = running + loss.detach()
        if (step + 1) % args.window_steps == 0:
            losses.append(float(running) / args.window_steps)
            running = torch.zeros(())
        t.append(time.perf_counter())
        if warm_steps <= step < warm_steps + timed_steps:
            for k, a, b in zip(PHASES, t, t[1:], strict=False):
                phase[k] += b - a
    if prof is not None:
        prof.__exit__(None, None, None)
    else:
        stamps.append(time.perf_counter())
    rates = [args.window_steps * args.batch_size / (b - a) for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"samples_per_s": statistics.median(rates), "windows": rates,
            "ms_per_step": 1000 * args.batch_size / statistics.median(rates),
            "phases_ms_per_step": {k: 1000 * v / timed_steps for k, v in phase.items()},
            "window_losses": losses, "ops": _ops(prof, args.ops_steps) if prof is not None else None}


def _ops(prof: Any, steps: int) -> dict:
    aten = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    top = sorted(aten, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return {"steps": steps, "aten_calls_per_step": sum(e.count for e in aten) / steps,
            "top_self_cpu": [{"op": e.key, "calls_per_step": e.count / steps,
                              "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / steps} for e in top]}


def cache_pass(args: Any, rows: dict) -> dict:
    """Teacher over train + dev, length-sorted batches, outputs into preallocated arrays (no files)."""
    import numpy as np
    import torch
    from transformers import BertForSequenceClassification

    teacher = BertForSequenceClassification.from_pretrained(str(Path(args.work_dir) / "teacher")).eval()
    bs = args.cache_batch_size or 256
    t0 = time.perf_counter()
    n_rows = 0
    with torch.inference_mode():
        for split in ("train", "dev"):
            r = rows[split]
            n = len(r["lengths"])
            logits_out = np.empty((n, 2), np.float32)
            cls_out = np.empty((n, 4, 32), np.float16)
            order = np.argsort(-r["lengths"], kind="stable")
            for i in range(0, n, bs):
                idx = order[i:i + bs]
                seq = int(r["lengths"][idx[0]])
                lens = torch.from_numpy(r["lengths"][idx])
                out = teacher(input_ids=torch.from_numpy(r["tokens"][idx, :seq]),
                              token_type_ids=torch.from_numpy(r["types"][idx, :seq]),
                              attention_mask=(torch.arange(seq)[None, :] < lens[:, None]).long(),
                              output_hidden_states=True)
                logits_out[idx] = out.logits.numpy()
                cls_out[idx] = torch.stack([h[:, 0] for h in out.hidden_states[1:]], dim=1).half().numpy()
            n_rows += n
    return {"rows_per_s": n_rows / (time.perf_counter() - t0), "rows": n_rows, "batch_size": bs}


def run_child(args: Any) -> None:
    import torch

    torch.manual_seed(0)
    cache_dir = Path(args.label)
    rows = load_rows(args, cache_dir)
    result = {"distill": distill_loop(args, rows, load_cache(cache_dir)), "cache": cache_pass(args, rows)}
    Path(args.plain_result).write_text(json.dumps(result, indent=2))
