"""Run the real ``dist-peakd`` CLI with timers wrapped around the product's functions (bench helper).

    <python> bench/_probe.py --out probe.json --record_from 40 --record_steps 200 [--ops_steps 5] -- distill ...

Used by ``bench/host_overhead.py`` with the python of the checkout being measured (this file imports
nothing from the current checkout, so it measures whichever ``dist_peakd`` that python imports). Each
target is ``module:Qualified.name``; a target that does not exist in that checkout is skipped and listed
under ``missing`` (so the same probe works before and after a restructure). Times are per thread: the
distill loop prepares batches in a background thread, which shares the GIL with the training thread.

For ``distill`` only steps ``record_from <= step < record_from + record_steps`` are recorded (the step is
read from the engine before each ``train_step``, or ``Engine.train`` where the stages drive the step); with ``--ops_steps N`` the N steps after that window are
run under ``torch.profiler`` and the number of operator calls per step and the top operators by self CPU
time are reported (the profiler's own overhead makes those steps useless for timing).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import sys
import threading
import time
from collections import defaultdict
from typing import Any

DISTILL_TARGETS = [
    # old (engine/loop.py) and restructured (data/rows.py, engine/prefetch.py, train_log.py) names: the
    # probe also measures older checkouts (--baseline_checkout); targets a checkout lacks are skipped
    ("dist_peakd.engine.loop:fetch_rows", "data fetch (Arrow rows)"),
    ("dist_peakd.data.rows:fetch_rows", "data fetch (Arrow rows)"),
    ("dist_peakd.data.collate:DynamicPaddingCollator.__call__", "collate"),
    ("dist_peakd.data.collate:DynamicPaddingCollator.gather", "collate"),  # the trainer's columnar path
    ("dist_peakd.cache.store:CacheSplit.lookup", "cache lookup"),
    ("dist_peakd.engine.loop:_Prefetcher.get", "wait for prefetched batch"),
    ("dist_peakd.engine.prefetch:Prefetcher.get", "wait for prefetched batch"),
    ("dist_peakd.engine.engine:Engine.train_step", "train_step (total)"),  # older checkouts only
    ("dist_peakd.engine.engine:Engine.backward", "engine.backward (incl. DeepSpeed backward)"),
    ("dist_peakd.engine.engine:Engine.step", "engine.step (incl. boundary check, clip, DeepSpeed step)"),
    ("dist_peakd.engine.engine:Engine.to_device", "host-to-device"),
    ("deepspeed.runtime.engine:DeepSpeedEngine.forward", "DeepSpeed forward (incl. model)"),
    ("dist_peakd.models.sps:SPSBertForSequenceClassification.forward", "model forward"),
    ("dist_peakd.distill.losses:distillation_loss", "loss"),
    ("deepspeed.runtime.engine:DeepSpeedEngine.backward", "backward (DeepSpeed)"),
    ("torch.nn.utils:clip_grad_norm_", "grad clip"),
    ("deepspeed.runtime.engine:DeepSpeedEngine.step", "optimizer step (DeepSpeed, incl. AdamW)"),
    ("torch.optim.adamw:AdamW.step", "AdamW.step"),
    ("dist_peakd.engine.loop:_allreduce_sums", "log: reduce window"),
    ("dist_peakd.engine.train_log:allreduce_sums", "log: reduce window"),
    ("dist_peakd.engine.tracking:Tracker.scalars", "log: TensorBoard scalars"),
    ("dist_peakd.engine.nonfinite:DeferredCheck.raise_if_found", "log: non-finite check (device read)"),
    ("dist_peakd.engine.train_log:TrainLog._read_window", "log: read window (device read)"),
]
CACHE_TARGETS = [
    ("dist_peakd.engine.loop:fetch_rows", "data fetch (Arrow rows)"),
    ("dist_peakd.data.rows:fetch_rows", "data fetch (Arrow rows)"),
    ("dist_peakd.data.collate:DynamicPaddingCollator.__call__", "collate"),
    ("dist_peakd.engine.engine:Engine.to_device", "host-to-device"),
    ("dist_peakd.models.teacher:teacher_forward", "teacher forward"),
    ("dist_peakd.cache.store:ShardWriter.add", "shard write (add rows)"),
    ("dist_peakd.cache.writer:ShardWriter.add", "shard write (add rows)"),
    ("dist_peakd.cache.store:ShardWriter.commit", "shard commit (fsync + sha256)"),
    ("dist_peakd.cache.writer:ShardWriter.commit", "shard commit (fsync + sha256)"),
    ("dist_peakd.stages.cache_teacher:_build_split", "split pass (total)"),
    ("dist_peakd.cache.store:TeacherCache.open", "verify (open, checksums)"),
    ("dist_peakd.data.tokenize:tokenize_dataset", "tokenize / load tokens"),
]

STATE: dict[str, Any] = {"active": False, "stage": "distill"}
TOTALS: dict[tuple[str, str], float] = defaultdict(float)  # (label, thread kind) -> seconds
CALLS: dict[tuple[str, str], int] = defaultdict(int)
STEP_STARTS: list[float] = []
OPS: dict[str, Any] = {}
_local = threading.local()


def _thread_kind() -> str:
    return "main" if threading.current_thread() is threading.main_thread() else "background"


def _resolve(target: str) -> tuple[Any, str, Any] | None:
    module_name, qual = target.split(":")
    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    parts = qual.split(".")
    for part in parts[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    fn = getattr(owner, parts[-1], None)
    return (owner, parts[-1], fn) if fn is not None else None


def _wrap(fn: Any, label: str) -> Any:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if not STATE["active"]:
            return fn(*args, **kwargs)
        depth = getattr(_local, label, 0)  # recursion / re-entry: count the outermost call only
        setattr(_local, label, depth + 1)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            setattr(_local, label, depth)
            if depth == 0:
                key = (label, _thread_kind())
                TOTALS[key] += time.perf_counter() - t0
                CALLS[key] += 1
    return timed


def install(targets: list[tuple[str, str]]) -> list[str]:
    """Wrap every target; also rebind the names other modules imported it under (``from x import f``)."""
    try:  # import the stage modules first, so the scan below sees their imported names
        importlib.import_module("dist_peakd.cli").stage_commands()
    except Exception:  # noqa: BLE001 - a checkout without this API: the scan covers what is loaded
        pass
    missing, swapped = [], {}
    for target, label in targets:
        found = _resolve(target)
        if found is None:
            missing.append(target)
            continue
        owner, name, fn = found
        wrapped = _wrap(fn, label)
        setattr(owner, name, wrapped)
        swapped[id(fn)] = (fn, wrapped)
    for mod_name, module in list(sys.modules.items()):
        if not mod_name.startswith("dist_peakd") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if id(value) in swapped and swapped[id(value)][0] is value:
                setattr(module, attr, swapped[id(value)][1])
    if STATE["stage"] != "distill":
        STATE["active"] = True
    return missing


def install_step_window(record_from: int, record_steps: int, ops_steps: int) -> None:
    """Switch recording on for the chosen steps (read from the engine) and profile ops after them."""
    # before the stages wrote their own step (engine.train_step), and after (engine.train() starts each step)
    found = _resolve("dist_peakd.engine.engine:Engine.train_step") or _resolve("dist_peakd.engine.engine:Engine.train")
    if found is None:
        return
    owner, name, fn = found
    stop = record_from + record_steps

    @functools.wraps(fn)
    def windowed(self: Any, *args: Any, **kwargs: Any) -> Any:
        step = int(getattr(self, "global_step", 0))
        STATE["active"] = record_from <= step < stop
        if STATE["active"] or step == stop:
            STEP_STARTS.append(time.perf_counter())
        if ops_steps and step == stop:
            import torch

            OPS["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            OPS["profiler"].__enter__()
        if ops_steps and step == stop + ops_steps and "profiler" in OPS:
            _finish_ops(ops_steps)
        return fn(self, *args, **kwargs)

    setattr(owner, name, windowed)


def _finish_ops(steps: int) -> None:
    prof = OPS.pop("profiler")
    prof.__exit__(None, None, None)
    events = prof.key_averages()
    aten = [e for e in events if e.key.startswith("aten::")]
    top = sorted(aten, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    OPS["result"] = {
        "steps": steps,
        "aten_calls_per_step": sum(e.count for e in aten) / steps,
        "top_self_cpu": [{"op": e.key, "calls_per_step": e.count / steps,
                          "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / steps} for e in top],
    }


def report(missing: list[str], units: int) -> dict[str, Any]:
    periods = [b - a for a, b in zip(STEP_STARTS, STEP_STARTS[1:], strict=False)]
    out: dict[str, Any] = {"missing": missing, "units": units, "phases": {}}
    for (label, kind), total in sorted(TOTALS.items()):
        out["phases"][f"{label} [{kind}]"] = {"ms_per_unit": 1000 * total / max(1, units),
                                              "calls": CALLS[(label, kind)]}
    if periods:
        out["step_ms_median"] = 1000 * statistics.median(periods)
        out["step_ms_mean"] = 1000 * statistics.fmean(periods)
    if "result" in OPS:
        out["ops"] = OPS["result"]
    return out


def main() -> None:
    sys.path.insert(0, os.getcwd())  # the checkout being measured (run with cwd = that checkout)
    argv = sys.argv[1:]
    split = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--record_from", type=int, default=0)
    p.add_argument("--record_steps", type=int, default=0)
    p.add_argument("--ops_steps", type=int, default=0)
    p.add_argument("--units", type=int, default=0, help="divide totals by this (rows for the cache pass)")
    args = p.parse_args(argv[:split])
    cli_args = argv[split + 1:]
    STATE["stage"] = cli_args[0]
    missing = install(DISTILL_TARGETS if cli_args[0] == "distill" else CACHE_TARGETS)
    if cli_args[0] == "distill":
        install_step_window(args.record_from, args.record_steps, args.ops_steps)
    from dist_peakd.cli import main as cli_main

    code = 0
    try:
        cli_main(cli_args)
    except SystemExit as e:
        code = int(e.code or 0)
    units = args.units or args.record_steps
    import dist_peakd

    result = report(missing, units) | {"exit_code": code, "dist_peakd_file": dist_peakd.__file__}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
