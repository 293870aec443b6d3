"""Advisory size report of dist_peakd (not a test, not a gate): files over ~400 lines, functions over ~60.

    .venv/bin/python tests/arch_report.py

Long code is a hint to look, not a failure: the gates are tests/test_architecture.py's layer rules and
no import cycle (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dist_peakd"
FILE_LINES = 400
FUNCTION_LINES = 60


def report() -> list[str]:
    """One line per file over FILE_LINES lines and per function over FUNCTION_LINES lines, longest first."""
    files, functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(PACKAGE).as_posix()
        if (n := len(text.splitlines())) > FILE_LINES:
            files.append((n, f"file {rel}: {n} lines"))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > FUNCTION_LINES:
                    functions.append((length, f"function {rel}::{node.name}: {length} lines"))
    return [line for _, line in sorted(files, reverse=True) + sorted(functions, reverse=True)]


if __name__ == "__main__":
    lines = report()
    print("\n".join(lines) if lines else f"no file over {FILE_LINES} lines, no function over {FUNCTION_LINES}")
