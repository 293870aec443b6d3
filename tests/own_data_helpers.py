"""Writers of small own-data files in every supported format (shared by the own-data tests)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import datasets

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")


def write_table(path: Path, rows: list[dict[str, Any]], bom: bool = False) -> Path:
    """Write ``rows`` (dicts with the same keys) to ``path`` in the format of its extension.

    CSV: ``csv.writer`` (RFC-4180 quoting). TSV: plain tab-joined fields (no quoting; fields must
    not hold tabs or newlines). JSON: one array of objects. JSONL: one object per line. Parquet:
    through ``datasets``. ``bom`` prepends a UTF-8 BOM (text formats).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else []
    fmt = path.suffix.lstrip(".")
    enc = "utf-8-sig" if bom else "utf-8"
    if fmt == "csv":
        with path.open("w", newline="", encoding=enc) as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows([[r[c] for c in columns] for r in rows])
    elif fmt == "tsv":
        lines = ["\t".join(columns)] + ["\t".join(str(r[c]) for c in columns) for r in rows]
        for line in lines:
            assert line.count("\t") == len(columns) - 1, line
        path.write_text("\n".join(lines) + "\n", encoding=enc)
    elif fmt == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding=enc)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding=enc)
    elif fmt == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        raise ValueError(fmt)
    return path


def hub_folder(root: Path, config: str, splits: dict[str, dict[str, list]], features: datasets.Features) -> Path:
    """A local folder laid out like a hub dataset (parquet per config/split + README configs)."""
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, cols in splits.items():
        (root / config).mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(cols, features=features).to_parquet(
            str(root / config / f"{split}-00000-of-00001.parquet"))
        lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    (root / "README.md").write_text("\n".join([*lines, "---", ""]))
    return root


#: Texts that trip naive readers: commas, quotes (also leading), NA-like words, digits with
#: leading zeros, non-ASCII, a leading '=' (spreadsheet formulas), trailing spaces.
TRICKY_TEXTS = [
    'a "quoted" word', '"starts with a quote', "comma, inside", "NA", "null", "None", "007",
    "caf\u00e9 \u2013 \u65e5\u672c", "=1+1", "trailing space ", "n/a", "#hashtag", "'single'",
]


def three_class_rows(n: int = 45) -> list[dict[str, Any]]:
    """``n`` rows of a synthetic 3-class set (text, label in bird/cat/dog), deterministic."""
    animals = ("cat", "dog", "bird")
    rows = []
    for i in range(n):
        label = animals[(i * 7) % 3]
        extra = TRICKY_TEXTS[i % len(TRICKY_TEXTS)]
        rows.append({"text": f"the {label} number {i} {extra}", "label": label})
    return rows
