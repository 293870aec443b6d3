"""The export folder's README.md: a Hub model card (YAML metadata with model-index) plus a readable body.

Inputs are plain values and dicts (what the stage summaries hold) so any stage can render it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ..models.configuration_sps_bert import MIN_TRANSFORMERS
from .card_limits import eval_rows_note, limitations_section

FORMATS: tuple[str, ...] = ("compact", "plain", "onnx")
_LIBRARIES: tuple[str, ...] = ("dist_peakd", "torch", "transformers", "deepspeed", "onnx", "onnxruntime", "onnxscript")
_METRIC_NAMES = {"accuracy": "Accuracy", "f1": "F1", "macro_f1": "Macro F1", "mcc": "Matthews correlation",
                 "matthews": "Matthews correlation", "pearson": "Pearson", "spearman": "Spearman",
                 "spearmanr": "Spearman", "acc_and_f1": "Accuracy and F1", "ptp_loss": "PTP loss",
                 "ptp_accuracy": "PTP accuracy"}


def library_versions(names: Sequence[str] = _LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names`` (the ones importable)."""
    out = {}
    for name in names:
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except (ImportError, AttributeError):
            continue
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _metadata(name: str, task: Mapping[str, Any], metrics: Mapping[str, float], base_model: str | None,
              license_id: str, export_format: str, tags: Sequence[str]) -> str:
    dataset = {"name": task.get("dataset_name", task["name"]), "type": task.get("dataset_type", task["name"])}
    for key in ("config", "split"):
        if task.get(key):
            dataset[key] = task[key]
    result = {
        "task": {"type": "text-classification", "name": "Text Classification"},
        "dataset": dataset,
        "metrics": [{"type": k, "value": float(v), "name": _METRIC_NAMES.get(k, k)}
                    for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)],
    }
    meta: dict[str, Any] = {
        "library_name": "onnx" if export_format == "onnx" else "transformers",
        "license": license_id,
        "pipeline_tag": "text-classification",
        "tags": list(tags),
    }
    if base_model:
        meta["base_model"] = base_model
    if task.get("dataset_type"):
        meta["datasets"] = [task["dataset_type"]]
    meta["model-index"] = [{"name": name, "results": [result]}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _teacher_name(method: Mapping[str, Any]) -> str:
    """The teacher by its identity: name, the model it was fine-tuned from, fingerprint (older records: as kept)."""
    text = f"`{method.get('teacher', '?')}`"
    extra = []
    if method.get("teacher_base_model"):
        extra.append(f"fine-tuned from `{method['teacher_base_model']}`")
    if method.get("teacher_fingerprint"):
        extra.append(f"fingerprint `sha256:{str(method['teacher_fingerprint'])[:16]}` of its config.json and weights")
    return text + (f" ({'; '.join(extra)})" if extra else "")


def _family_name(method: Mapping[str, Any]) -> str:
    """``BERT`` for a BERT student (and a record without a family), else the family's model type."""
    family = method.get("family") or "bert"
    return "BERT" if family == "bert" else f"`{family}`"


def _what_it_is(method: Mapping[str, Any]) -> list[str]:
    if method.get("kind") == "teacher":
        return [f"A fine-tuned {_family_name(method)} classifier (the teacher), from `{method.get('backbone', '?')}`."]
    if method.get("kind") == "ptp":
        return [f"A **Pea-KD PTP encoder**: SPS {_family_name(method)} with k = {method.get('k')} parameter layers run as "
                f"{method.get('num_effective_layers')} effective layers (variant `{method.get('variant')}`), "
                "pretrained on teacher-prediction labels (teacher right/wrong x confident/unsure, 4 classes) of "
                f"the teacher {_teacher_name(method)}. It is the starting point of distillation (which puts "
                "a fresh task head on it), not a task classifier: its outputs are the 4 PTP classes."]
    if method.get("student") == "plain":
        source = (f"the layers {method.get('backbone_layers')} of the pretrained checkpoint "  # issue 23 item 4
                  f"`{method['student_backbone']}` (a student from another checkpoint than the teacher's; its own "
                  "tokenizer)" if method.get("student_backbone") else f"the backbone's layers {method.get('backbone_layers')}")
        return [f"A **plain {method.get('depth')}-layer {_family_name(method)}** student (each layer run once) whose layers were copied "
                f"from {source} (layer map `{method.get('layer_map')}`), "
                f"{'pretrained with PTP, ' if method.get('ptp') else ''}distilled from the teacher "
                f"{_teacher_name(method)} with {method.get('distillation', 'KD + Patient-KD')}."]
    lines = [
        f"A **Pea-KD** student: SPS (Shuffled Parameter Sharing) {_family_name(method)} with k = {method.get('k')} parameter "
        f"layers run as {method.get('num_effective_layers')} effective layers (variant `{method.get('variant')}`; "
        "a second pass re-uses layers with the query and key projections swapped), "
        f"{'pretrained with PTP, ' if method.get('ptp') else ''}distilled from the teacher "
        f"{_teacher_name(method)} with {method.get('distillation', 'KD + Patient-KD')}.",
    ]
    if method.get("schedule") is not None:
        lines.append(f"Effective-layer schedule `[param_layer, swap_qk]`: `{json.dumps(method['schedule'])}`.")
    return lines


def _metrics_table(dev_metrics: Mapping[str, Mapping[str, float]]) -> list[str]:
    columns = [c for c in ("final", "best", "teacher") if c in dev_metrics] + \
              [c for c in dev_metrics if c not in ("final", "best", "teacher")]
    names = list(dict.fromkeys(k for c in columns for k in dev_metrics[c]))
    rows = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        rows.append(f"| {name} | " + " | ".join(_fmt(dev_metrics[c].get(name)) for c in columns) + " |")
    return rows


def _cost_table(stats: Mapping[str, Any], teacher_stats: Mapping[str, Any] | None) -> list[str]:
    keys = [("parameters", "parameters"), ("num_parameter_layers", "parameter layers"),
            ("num_effective_layers", "effective layers"), ("flops_per_token", "FLOPs / token"),
            ("forward_gflops_per_sequence", "GFLOPs / sequence")]
    head = "| | this model |" + (" teacher | ratio |" if teacher_stats else "")
    rows = [head, "|---|---|" + ("---|---|" if teacher_stats else "")]
    for key, label in keys:
        if key not in stats:
            continue
        row = f"| {label} | {_fmt(stats[key])} |"
        if teacher_stats:
            t = teacher_stats.get(key)
            ratio = f"{stats[key] / t:.2f}x" if isinstance(t, (int, float)) and t else "-"
            row += f" {_fmt(t)} | {ratio} |"
        rows.append(row)
    if "seq_len" in stats:
        rows.append(f"\nFLOPs counted at sequence length {stats['seq_len']} (2 FLOPs per multiply-add).")
    return rows


def _latency_table(latency: Sequence[Mapping[str, Any]]) -> list[str]:
    cols = list(dict.fromkeys(k for row in latency for k in row))
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + \
           ["| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |" for row in latency]


def _latency_section(latency: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """The measured latency (each row names its machine and threads; older records did not)."""
    if not latency:
        return []
    out = ["## Measured latency", "", *_latency_table(latency), ""]
    if not all(row.get("machine") for row in latency):
        out += ["The machine and thread count of these figures were not recorded.", ""]
    return out


def onnx_fusion_note(family: str) -> str:
    """What the card says of ``model.onnx`` for a model of ``family`` (fused by onnxruntime or a plain graph)."""
    from ..models.configuration_sps_family import FAMILIES

    spec = FAMILIES.get(family)
    if spec is not None and spec.onnx_optimizer is None:
        return (f"`model.onnx` is a plain graph of standard ONNX ops: onnxruntime's transformer optimizer has no "
                f"fusion for `{family}` models, so none is applied.")
    return ("`model.onnx` is fused for onnxruntime (its contrib ops: LayerNorm, GELU, attention); a graph of "
            "standard ONNX ops only comes from `dist-peakd export --format onnx --optimize False`.")


def _family_how_to_load(export_format: str, family: str) -> list[str]:
    """The notes of a non-BERT (``sps-family``) student's compact and plain folders."""
    if export_format == "compact":
        return ["", "This folder carries its model code (`modeling_sps_family.py`, `configuration_sps_family.py`, "
                "`configuration_sps_bert.py`, `auto_map` in `config.json`; model type `sps-family` over a "
                f"`{family}` config of the parameter layers), hence `trust_remote_code=True`. The code needs "
                f"**transformers >= {MIN_TRANSFORMERS}**; the plain export loads with any transformers that has "
                f"`{family}`. Without `trust_remote_code=True` the folder is refused (its model type is not a "
                f"transformers one). For runtimes without custom code use the plain export (`--format plain`): a "
                f"standard `{family}` folder of the effective layers, same logits, same compute, more weights on disk."]
    if export_format == "plain":
        return ["", f"A standard `{family}` folder: `AutoModelForSequenceClassification`, ONNX exporters, optimum and "
                f"other `{family}` runtimes load it without custom code."]
    return []


def _how_to_load(export_format: str, repo: str, example: tuple[str, str], family: str = "bert") -> list[str]:
    a, b = example
    if export_format == "onnx":
        return ["```python", "import onnxruntime as ort", "from transformers import AutoTokenizer",
                f'tok = AutoTokenizer.from_pretrained("{repo}")',
                f'sess = ort.InferenceSession("{repo}/model.onnx")  # or model_int8.onnx',
                f'enc = tok("{a}", "{b}", truncation=True, return_tensors="np")  # at the trained length',
                'logits = sess.run(["logits"], {k: v for k, v in enc.items() if k in {i.name for i in '
                'sess.get_inputs()}})[0]' if family != "bert" else
                'logits = sess.run(["logits"], {k: v for k, v in enc.items()})[0]', "```", "",
                onnx_fusion_note(family)]
    trust = ", trust_remote_code=True" if export_format == "compact" else ""
    lines = ["```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline",
             f'model = AutoModelForSequenceClassification.from_pretrained("{repo}"{trust})',
             f'tok = AutoTokenizer.from_pretrained("{repo}"{trust})',
             f'clf = pipeline("text-classification", model=model, tokenizer=tok{trust})',
             f'clf({{"text": "{a}", "text_pair": "{b}"}}, top_k=None, truncation=True)', "```", "",
             "`truncation=True` cuts inputs at the length the model was trained at (the tokenizer's "
             "`model_max_length`), as training and `dist-peakd predict` do; without it a longer input runs "
             "whole and scores differently."]
    if family != "bert":
        return lines + _family_how_to_load(export_format, family)
    if export_format == "compact":
        lines += ["", "This folder carries its model code (`modeling_sps_bert.py`, `configuration_sps_bert.py`, "
                  "`auto_map` in `config.json`), hence `trust_remote_code=True`. The code needs **transformers >= "
                  f"{MIN_TRANSFORMERS}** (checked when it loads: an older one gets an ImportError naming both "
                  "versions); the plain export loads with any transformers. A plain "
                  "`BertForSequenceClassification.from_pretrained` refuses it with an error "
                  "(`num_hidden_layers` records parameter and effective layers). For runtimes without custom code use the "
                  "plain export (`--format plain`): a standard `bert` folder of the effective layers, same "
                  "logits, same compute, more weights on disk."]
    elif export_format == "plain":
        lines += ["", "A standard `bert` folder: `BertForSequenceClassification`, ONNX exporters, optimum and "
                  "other BERT runtimes load it without custom code."]
    return lines


def _check_inputs(export_format: str, exported: str, dev_metrics: Mapping[str, Any]) -> None:
    if export_format not in FORMATS:
        raise ValueError(f"export_format must be one of {list(FORMATS)}, got {export_format!r}")
    if exported not in dev_metrics:
        raise ValueError(f"exported={exported!r} is not a key of dev_metrics {list(dev_metrics)}")


def render_model_card(
    *,
    name: str,
    task: Mapping[str, Any],
    dev_metrics: Mapping[str, Mapping[str, float]],
    method: Mapping[str, Any],
    stats: Mapping[str, Any],
    command: str,
    options: Mapping[str, Any],
    export_format: str = "compact",
    exported: str = "final",
    teacher_stats: Mapping[str, Any] | None = None,
    latency: Sequence[Mapping[str, Any]] | None = None,
    versions: Mapping[str, str] | None = None,
    base_model: str | None = None,
    license_id: str = "apache-2.0",
    example: tuple[str, str] = ("The cat sat on the mat.", "A cat was sitting on the mat."),
    eval_rows: Mapping[str, Any] | None = None,
    limitations: Mapping[str, Any] | None = None,
    sections: Mapping[str, str] | None = None,
) -> str:
    """The README.md of an export folder.

    Args:
        name: model name (model-index entry and title).
        task: ``{"name": "mrpc", "dataset_name": "GLUE MRPC", "dataset_type": "nyu-mll/glue",
            "config": "mrpc", "split": "validation"}`` (only ``name`` required).
        dev_metrics: ``{"final": {...}, "best": {...}, "teacher": {...}}`` (any subset); the entry named
            ``exported`` (the checkpoint in this folder) goes into the model-index metadata.
        method: ``kind`` ("student" or "teacher"), ``teacher``, ``backbone``, ``k``, ``variant``,
            ``num_effective_layers``, ``schedule``, ``ptp`` (bool), ``distillation`` (text).
        stats: :func:`dist_peakd.models.model_stats` of this model (plus ``seq_len``); ``teacher_stats``
            the teacher's, for ratios.
        command / options: the exact command line and the resolved options that made the model.
        export_format: one of :data:`FORMATS` (decides the loading instructions).
        latency: rows of measured latency (e.g. ``{"runtime": "onnxruntime fp32", "batch": 1, "seq": 128,
            "median_ms": 3.1}``), shown as given.
        versions: library versions (default: the installed ones).
        eval_rows / limitations: see :mod:`.card_limits` (a subset's row counts; the baseline and skew).
        sections: extra sections (title -> Markdown body) after the latency, e.g. the compression front.
    """
    _check_inputs(export_format, exported, dev_metrics)
    kind = method.get("kind", "student")
    family = str(method.get("family") or "bert")
    tags = ["dist-peakd", family, "text-classification"] + (["knowledge-distillation", "pea-kd", "sps"]
                                                           if kind in ("student", "ptp") else [])
    out = [_metadata(name, task, dev_metrics[exported], base_model, license_id, export_format, tags)]
    out += [f"# {name}", "", *_what_it_is(method), "",
            f"Task: **{task.get('dataset_name', task['name'])}** (`{task['name']}`). This folder holds the "
            f"`{exported}` checkpoint, in the **{export_format}** format.", "",
            f"## Dev metrics{eval_rows_note(eval_rows)}", "", *_metrics_table(dev_metrics), "",
            "## Size and compute", "", *_cost_table(stats, teacher_stats), ""]
    out += _latency_section(latency) + limitations_section(limitations, dev_metrics, exported, eval_rows)
    out += [line for title, body in (sections or {}).items() for line in (f"## {title}", "", body.rstrip(), "")]
    plain_model = kind == "teacher" or method.get("student") == "plain"  # a plain student is a bert folder too
    load_format = "plain" if plain_model and export_format == "compact" else export_format
    out += ["## How to load", "", *_how_to_load(load_format, f"path/to/{name}", example, family), "",
            "## How it was made", "", "```bash", command, "```", "", "Options:", "", "```json",
            json.dumps(dict(options), indent=2, sort_keys=True, default=str), "```", "",
            "## Library versions", "",
            *[f"- {k} {v}" for k, v in (versions if versions is not None else library_versions()).items()], ""]
    return "\n".join(out)


def parse_card_metadata(card: str) -> dict[str, Any]:
    """The YAML metadata block of a card (for checks and tests)."""
    if not card.startswith("---\n"):
        raise ValueError("model card has no YAML metadata block")
    end = card.index("\n---\n", 4)
    return yaml.safe_load(card[4:end])
