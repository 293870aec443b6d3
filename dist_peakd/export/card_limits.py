"""The model card's "Limitations" section, what its dev metrics were measured on, and the machine of
its latency figures.

Inputs are the plain values a stage records (:func:`dist_peakd.metrics.prediction_profile` of the exported
checkpoint's dev evaluation, the dev-row counts), so the card re-renders from the folder's record:
``eval_rows`` = ``{"rows": N, "of": M}`` when the dev metrics are of the first N of M dev rows
(``--max_eval_examples``; labelled as a subset in the body and the metadata); ``limitations`` =
``prediction_profile`` + ``main_metric`` (trivial baseline, teacher's gain kept, class skew).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any

from ..metrics import baseline_warning, compare_to_baseline, gain_kept


def eval_rows_note(eval_rows: Mapping[str, Any] | None) -> str:
    """``" (dev subset: first N of M rows)"`` for a ``--max_eval_examples`` run, else ``""``."""
    if not eval_rows:
        return ""
    return f" (dev subset: first {int(eval_rows['rows']):,} of {int(eval_rows['of']):,} rows)"


def _baseline_lines(lim: Mapping[str, Any], metrics: Mapping[str, float], teacher: Mapping[str, float] | None,
                    where: str) -> list[str]:
    base = lim["baseline"]
    main = lim.get("main_metric") or next(iter(base["metrics"]))
    rule = (f"always the most frequent gold class of those rows, `{base['class']}`" if base["rule"] == "majority"
            else f"always the mean of their gold values, {base['value']:.4f} (a constant correlates with nothing: 0)")
    values = ", ".join(f"{k} {v:.4f}" for k, v in base["metrics"].items())
    lines = [f"- **Trivial baseline** on the same {lim['rows']:,} dev rows ({where}{rule}): {values}. "
             f"This model: {main} {metrics.get(main, float('nan')):.4f}."]
    if main in metrics and main in base["metrics"]:
        warning = baseline_warning("this model", compare_to_baseline(main, metrics, {**base, "rows": lim["rows"]}))
        if warning:
            lines.append(f"- **Warning**: {warning}.")
    if teacher and main in teacher and main in metrics:
        kept = gain_kept(metrics[main], base["metrics"][main], teacher[main])
        if kept is None:
            lines.append(f"- The teacher scores {main} {teacher[main]:.4f}, no better than the baseline: there is no "
                         "gain of the teacher's for this model to keep.")
        else:
            lines.append(f"- The teacher scores {main} {teacher[main]:.4f}: this model keeps **{kept:.1%}** of the "
                         f"teacher's gain over the baseline ((model - baseline) / (teacher - baseline) on {main}).")
    return lines


def _skew_lines(lim: Mapping[str, Any]) -> list[str]:
    if "predicted_share" in lim:
        rows = ["- **Class skew** of the predictions on those dev rows (share of each class):", "",
                "  | class | predicted | gold |", "  |---|---|---|"]
        rows += [f"  | {name} | {share:.4f} | {lim['gold_share'].get(name, 0.0):.4f} |"
                 for name, share in lim["predicted_share"].items()]
        return rows
    p, g = lim["predictions"], lim["gold"]
    return [f"- **Spread** of the predictions on those dev rows: mean {p['mean']:.4f}, std {p['std']:.4f} "
            f"(gold: mean {g['mean']:.4f}, std {g['std']:.4f})."]


def limitations_section(lim: Mapping[str, Any] | None, dev_metrics: Mapping[str, Mapping[str, float]],
                        exported: str, eval_rows: Mapping[str, Any] | None) -> list[str]:
    """The "## Limitations" lines (none without a recorded profile: PTP encoders, older records)."""
    if not lim or "baseline" not in lim:
        return []
    where = f"the first {int(eval_rows['rows']):,} of {int(eval_rows['of']):,}; " if eval_rows else ""
    out = ["## Limitations", "", *_baseline_lines(lim, dev_metrics[exported], dev_metrics.get("teacher"), where),
           *_skew_lines(lim)]
    if eval_rows:
        out.append(f"- The dev metrics are of the first {int(eval_rows['rows']):,} of {int(eval_rows['of']):,} dev "
                   "rows (`--max_eval_examples`), not of the whole split; one example is "
                   f"{1 / max(1, int(eval_rows['rows'])):.4f} of them.")
    out.append("- Measured on the task's dev data only: other domains, text lengths over the trained "
               "`max_length` (cut) and inputs unlike the training data are not covered.")
    return [*out, ""]


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s ``model name``; else the platform's processor string)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description(device: Any = None) -> dict[str, Any]:
    """Where a latency figure was measured: ``machine`` (GPU name or CPU model) and ``threads``
    (``torch.get_num_threads()``, the intra-op threads of a CPU run)."""
    import torch

    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        name = f"{torch.cuda.get_device_name(torch.device(device))} (GPU)"
    else:
        name = f"{cpu_name()} (CPU, {os.cpu_count()} logical cores)"
    return {"machine": name, "threads": torch.get_num_threads()}
