"""Markdown tables of a bench/host_overhead.py report (throughput, targets, per-step breakdowns, ops)."""

from __future__ import annotations

from typing import Any

# (row, probe phase key, plain phase key)
STEP_ROWS = [
    ("data fetch (Arrow rows -> dicts) [prefetch thread]", "data fetch (Arrow rows) [background]", "data fetch"),
    ("collate [prefetch thread]", "collate [background]", "collate"),
    ("cache lookup [prefetch thread]", "cache lookup [background]", "cache lookup"),
    ("wait for the prefetched batch", "wait for prefetched batch [main]", None),
    ("host-to-device", "host-to-device [main]", "host-to-device"),
    ("model forward", "model forward [main]", "forward"),
    ("DeepSpeed forward wrapper (incl. model forward)", "DeepSpeed forward (incl. model) [main]", None),
    ("loss", "loss [main]", "loss"),
    ("backward", "backward (DeepSpeed) [main]", "backward"),
    ("grad clip", "grad clip [main]", None),
    ("AdamW.step", "AdamW.step [main]", None),
    ("optimizer step (DeepSpeed step incl. AdamW + schedule + zero_grad; plain: clip too)",
     "optimizer step (DeepSpeed, incl. AdamW) [main]", "optimizer (clip + AdamW + schedule + zero_grad)"),
    ("logging: window all-reduce", "log: reduce window [main]", None),
    ("logging: TensorBoard scalars", "log: TensorBoard scalars [main]", None),
    ("logging / sync (plain: loss.item() every window)", None, "logging / sync"),
    ("train_step total", "train_step (total) [main]", None),
]
TRAIN_STEP_PARTS = ("host-to-device [main]", "DeepSpeed forward (incl. model) [main]", "loss [main]",
                    "backward (DeepSpeed) [main]", "grad clip [main]", "optimizer step (DeepSpeed, incl. AdamW) [main]")
CACHE_ROWS = ["tokenize / load tokens", "data fetch (Arrow rows)", "collate", "host-to-device", "teacher forward",
              "shard write (add rows)", "shard commit (fsync + sha256)", "split pass (total)",
              "verify (open, checksums)"]


def _fmt(x: Any, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _phase(probe: dict | None, key: str | None) -> float | None:
    if not probe or key is None or key not in probe.get("phases", {}):
        return None
    return probe["phases"][key]["ms_per_unit"]


def _derived(probe: dict | None) -> tuple[float | None, float | None]:
    """(train_step minus its timed parts, step period minus train_step and the wait) in ms per step."""
    if not probe or "step_ms_mean" not in probe:
        return None, None
    ts = _phase(probe, "train_step (total) [main]")
    if ts is None:
        return None, None
    parts = sum(_phase(probe, k) or 0.0 for k in TRAIN_STEP_PARTS)
    wait = _phase(probe, "wait for prefetched batch [main]") or 0.0
    return ts - parts, probe["step_ms_mean"] - ts - wait


def _mark(ok: bool) -> str:
    return "**met**" if ok else "not met"


def _loads(runs: list[dict]) -> str:
    values = [r["loadavg_before"][0] for r in runs if r.get("loadavg_before")]
    return "-" if not values else (f"{min(values)}-{max(values)}" if len(values) > 1 else str(values[0]))


def _spread(d: dict, key: str) -> str:
    values = d.get("repeat_values") or []
    return f" ({min(values):,.0f}-{max(values):,.0f})" if len(values) > 1 else ""


def throughput_table(report: dict) -> list[str]:
    lines = ["| arm | distill samples/s (median; range over repeats) | ms per step | cache pass rows/s | "
             "load avg (1 min) at the arms' starts |", "|---|---|---|---|---|"]
    for name, arm in report["arms"].items():
        d, c = arm.get("distill", {}), arm.get("cache", {})
        if name == "plain":
            label = "plain PyTorch loop (HF BertModel, same loss and batches; cache pass: no files)"
        else:
            label = f"dist-peakd `{name}` ({arm.get('git', '?')})"
        load = _loads([d, c]) if name != "plain" else _loads([arm])
        lines.append(f"| {label} | {_fmt(d.get('samples_per_s'), 0)}{_spread(d, 'samples_per_s')} | "
                     f"{_fmt(d.get('ms_per_step'))} | {_fmt(c.get('rows_per_s'), 0)}{_spread(c, 'rows_per_s')} | "
                     f"{load} |")
    return lines


def targets_table(report: dict) -> list[str]:
    t = report["targets"]
    plain = report["arms"].get("plain", {}).get("distill", {}).get("samples_per_s")
    lines = ["| target | arm | value | |", "|---|---|---|---|"]
    for name, arm in report["arms"].items():
        if name == "plain" or "distill" not in arm:
            continue
        sps, rows = arm["distill"]["samples_per_s"], arm.get("cache", {}).get("rows_per_s")
        lines.append(f"| distill >= {t['distill_samples_per_s']:,.0f} samples/s | {name} | {sps:,.0f} | "
                     f"{_mark(sps >= t['distill_samples_per_s'])} |")
        if plain:
            lines.append(f"| distill / plain loop >= {t['distill_over_plain']:.1f} | {name} | {sps / plain:.2f} | "
                         f"{_mark(sps / plain >= t['distill_over_plain'])} |")
        if rows is not None:
            lines.append(f"| cache pass >= {t['cache_rows_per_s']:,.0f} rows/s | {name} | {rows:,.0f} | "
                         f"{_mark(rows >= t['cache_rows_per_s'])} |")
    return lines


def breakdown_table(report: dict) -> list[str]:
    products = [(n, a.get("probe_distill")) for n, a in report["arms"].items() if n != "plain"]
    plain = report["arms"].get("plain", {}).get("distill", {})
    heads = [f"`{n}`" for n, _ in products] + (["plain"] if plain else [])
    lines = ["| phase (ms per step) | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    step_row = [_fmt(p.get("step_ms_median")) if p else "-" for _, p in products]
    lines.append("| **step (median period; plain: window median)** | " + " | ".join(
        step_row + ([_fmt(plain.get("ms_per_step"))] if plain else [])) + " |")
    for row, pkey, qkey in STEP_ROWS:
        cells = [_fmt(_phase(p, pkey)) for _, p in products]
        if plain:
            cells.append(_fmt(plain.get("phases_ms_per_step", {}).get(qkey)) if qkey else "-")
        if all(c == "-" for c in cells):
            continue
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    derived = [_derived(p) for _, p in products]
    for i, row in enumerate(("train_step other (loss glue, term stack + one .tolist() sync, flags)",
                             "loop other (step mean - train_step - wait: tqdm, flags, bookkeeping)")):
        cells = [_fmt(d[i]) for d in derived] + (["-"] if plain else [])
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    ops = [(p or {}).get("ops") for _, p in products] + ([plain.get("ops")] if plain else [])
    lines.append("| aten operator calls per step (torch.profiler) | " + " | ".join(
        _fmt(o["aten_calls_per_step"], 0) if o else "-" for o in ops) + " |")
    return lines


def top_ops(report: dict) -> list[str]:
    lines = []
    for name, arm in report["arms"].items():
        ops = (arm.get("distill", {}) if name == "plain" else arm.get("probe_distill") or {}).get("ops")
        if not ops:
            continue
        top = ", ".join(f"{o['op'][6:]} {o['calls_per_step']:.0f}x {o['self_cpu_ms_per_step']:.2f} ms"
                        for o in ops["top_self_cpu"][:6])
        lines.append(f"- `{name}`: top operators by self CPU time per step: {top}")
    return lines


def cache_table(report: dict) -> list[str]:
    products = [(n, a.get("probe_cache")) for n, a in report["arms"].items() if n != "plain" and a.get("probe_cache")]
    if not products:
        return []
    lines = ["| cache pass phase (ms per 1,000 rows) | " + " | ".join(f"`{n}`" for n, _ in products) + " |",
             "|---|" + "---|" * len(products)]
    for row in CACHE_ROWS:
        cells = []
        for _, p in products:
            key = next((k for k in p["phases"] if k.startswith(row + " [")), None)
            cells.append(_fmt(1000 * p["phases"][key]["ms_per_unit"]) if key else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    env, setup = report["environment"], report["setup"]
    labels = ", ".join(report["arms"])
    lines = [f"### Host overhead {report['date']} on {env['device']} ({labels})", "",
             f"`{report['command']}`  ",
             f"torch {env['torch']}, deepspeed {env['deepspeed']}, transformers {env['transformers']}, "
             f"{env['torch_threads']} torch threads; load average (1/5/15 min) at start {env.get('loadavg_start')}, "
             f"end {env.get('loadavg_end')} (the machine is shared). {setup['task']}, shape {setup['shape']}, "
             f"student {setup['student']}, teacher {setup['teacher']}, batch {setup['batch_size']}, max length "
             f"{setup['max_length']}, fp32; median of {setup['windows']} windows x {setup['window_steps']} steps "
             f"after {setup['warmup_steps']} warm-up steps; {setup.get('repeats', 1)} repeat(s) of the timed arms, "
             f"interleaved; OMP_NUM_THREADS {setup.get('torch_threads_option') or 'default'}.", "",
             *throughput_table(report), "", *targets_table(report), "",
             "Per-step breakdown (instrumented CLI runs, bench/_probe.py: time inside each function per step; "
             "the prefetch thread runs beside the training thread and shares the GIL with it):", "",
             *breakdown_table(report), "", *top_ops(report)]
    cache = cache_table(report)
    if cache:
        lines += ["", *cache]
    return "\n".join(lines) + "\n"
