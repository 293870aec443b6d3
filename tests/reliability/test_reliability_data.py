"""Reliability row 6: the GLUE TSV readers under fuzzing (hypothesis).

Every generated or damaged file is either read exactly as intended or refused with a
``DataError`` whose message names the file (and the 1-based line where there is one). The one
damage a reader cannot see: a file cut inside the *last field of its last row* looks like a valid
file without a final newline (the real CoLA dev.tsv has none); the property pins that the cut row
then differs from the intended one only by that field being a prefix.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dist_peakd.data.errors import DataError, DataLayoutError, EncodingError, LabelError, MalformedRowError
from dist_peakd.data.readers import read_glue_tsv

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Field text: anything but the separators (tab, LF, CR) and lone surrogates (not encodable as UTF-8).
TEXT = st.text(st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)), max_size=20)
DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z", re.ASCII)


@dataclass(frozen=True)
class Layout:
    task: str
    header: tuple[str, ...] | None  # None: headerless (CoLA train)
    columns: tuple[str, ...]
    text_a: str
    text_b: str | None
    label: str
    labels: tuple[str, ...] | None  # None: regression score


LAYOUTS = {
    "sst2": Layout("sst2", ("sentence", "label"), ("sentence", "label"), "sentence", None, "label", ("0", "1")),
    "mrpc": Layout("mrpc", ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
                   ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), "#1 String", "#2 String", "Quality",
                   ("0", "1")),
    "rte": Layout("rte", ("index", "sentence1", "sentence2", "label"), ("index", "sentence1", "sentence2", "label"),
                  "sentence1", "sentence2", "label", ("entailment", "not_entailment")),
    "stsb": Layout("stsb", ("index", "genre", "sentence1", "sentence2", "score"),
                   ("index", "genre", "sentence1", "sentence2", "score"), "sentence1", "sentence2", "score", None),
    "cola": Layout("cola", None, ("source", "label", "original_label", "sentence"), "sentence", None, "label",
                   ("0", "1")),
}


@dataclass
class Sample:
    layout: Layout
    rows: list[list[str]]  # data rows as column strings
    bom: bool
    crlf: bool
    final_newline: bool

    def lines(self) -> list[str]:
        head = [] if self.layout.header is None else ["\t".join(self.layout.header)]
        return head + ["\t".join(r) for r in self.rows]

    @property
    def first_data_line(self) -> int:
        return 1 if self.layout.header is None else 2

    def to_bytes(self, lines: list[str] | None = None) -> bytes:
        lines = self.lines() if lines is None else lines
        eol = "\r\n" if self.crlf else "\n"
        text = eol.join(lines) + (eol if self.final_newline else "")
        return ("\ufeff" if self.bom else "").encode() + text.encode("utf-8")

    def expected(self, rows: list[list[str]] | None = None) -> dict[str, list]:
        rows = self.rows if rows is None else rows
        lay = self.layout
        idx = {c: i for i, c in enumerate(lay.columns)}
        return {"idx": list(range(len(rows))),
                "text_a": [r[idx[lay.text_a]] for r in rows],
                "text_b": [r[idx[lay.text_b]] if lay.text_b else "" for r in rows],
                "label": [lay.labels.index(r[idx[lay.label]]) if lay.labels else float(r[idx[lay.label]])
                          for r in rows]}


@st.composite
def samples(draw, layouts=tuple(LAYOUTS)) -> Sample:
    lay = LAYOUTS[draw(st.sampled_from(layouts))]
    n = draw(st.integers(1, 6))
    rows = []
    for _ in range(n):
        row = []
        for col in lay.columns:
            if col == lay.label:
                value = draw(st.sampled_from(lay.labels)) if lay.labels else \
                    draw(st.sampled_from(["{:.3f}", "{:.1f}", "{:g}"])).format(draw(st.floats(0, 5)))
            else:
                value = draw(TEXT)
            row.append(value)
        rows.append(row)
    if lay.header is None:  # a headerless first row that looks like a header is refused, not misread
        assume("sentence" not in rows[0])
    assume(any(x.strip() for r in rows for x in r) or lay.header is not None)
    return Sample(lay, rows, draw(st.booleans()), draw(st.booleans()), draw(st.booleans()))


def _read(sample: Sample, data: bytes) -> tuple[Path, dict | DataError]:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    path = folder / "train.tsv"
    path.write_bytes(data)
    try:
        return path, read_glue_tsv(sample.layout.task, path, "train")
    except DataError as e:
        return path, e


def _assert_refusal_names_file(path: Path, err: DataError, total_lines: int) -> None:
    assert str(path) in str(err), f"error does not name the file: {err}"
    if isinstance(err, MalformedRowError | LabelError | EncodingError):
        assert 1 <= err.line <= max(1, total_lines), f"line {err.line} outside 1..{total_lines}: {err}"
        assert f"{path}:{err.line}:" in str(err)
    else:
        assert isinstance(err, DataLayoutError), f"unexpected error type {type(err).__name__}: {err}"


def _same(got: dict, want: dict) -> bool:
    if {k: v for k, v in got.items() if k != "label"} != {k: v for k, v in want.items() if k != "label"}:
        return False
    return all((a == b) or (isinstance(a, float) and math.isclose(a, b)) for a, b in
               zip(got["label"], want["label"], strict=True))


@SETTINGS
@given(samples())
def test_valid_files_are_read_exactly(sample):
    path, got = _read(sample, sample.to_bytes())
    assert not isinstance(got, DataError), f"valid file refused: {got}"
    assert _same(got, sample.expected())


@SETTINGS
@given(samples(), st.data())
def test_truncated_files_are_refused_or_cut_only_in_the_last_field(sample, data):
    full = sample.to_bytes()
    cut = data.draw(st.integers(0, len(full) - 1), label="cut")
    path, got = _read(sample, full[:cut])
    if isinstance(got, DataError):
        _assert_refusal_names_file(path, got, len(sample.lines()))
        return
    n = len(got["idx"])
    assert 1 <= n <= len(sample.rows)
    want_full = sample.expected(sample.rows[:n - 1])
    assert _same({k: v[:n - 1] for k, v in got.items()}, want_full), "a complete row changed"
    # the last row read: equal to the intended one, or cut inside its last field only
    intended = sample.rows[n - 1]
    text = full[:cut].decode("utf-8").lstrip("\ufeff").replace("\r\n", "\n")
    got_fields = text.rstrip("\n").split("\n")[-1].rstrip("\r").split("\t")
    assert got_fields[:-1] == intended[:-1], "a field other than the last one changed"
    assert intended[-1].startswith(got_fields[-1])
    if got_fields == intended:
        assert _same(got, sample.expected(sample.rows[:n]))


@SETTINGS
@given(samples(), st.data())
def test_extra_or_missing_tab_is_refused_at_its_line(sample, data):
    lines = sample.lines()
    i = data.draw(st.integers(sample.first_data_line - 1, len(lines) - 1), label="line index")
    line = lines[i]
    if data.draw(st.booleans(), label="extra tab"):
        pos = data.draw(st.integers(0, len(line)), label="position")
        lines[i] = line[:pos] + "\t" + line[pos:]
    else:
        tabs = [j for j, ch in enumerate(line) if ch == "\t"]
        assume(tabs)
        j = data.draw(st.sampled_from(tabs), label="tab")
        lines[i] = line[:j] + line[j + 1:]
    path, got = _read(sample, sample.to_bytes(lines))
    assert isinstance(got, MalformedRowError), f"damaged line {i + 1} was accepted: {got}"
    assert got.line == i + 1 and f"{path}:{i + 1}:" in str(got)


@SETTINGS
@given(samples(), st.data(), st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xf8\x88"]))
def test_invalid_utf8_is_refused_at_its_line(sample, data, bad):
    good = sample.to_bytes()
    pos = data.draw(st.integers(0, len(good)), label="position")
    damaged = good[:pos] + bad + good[pos:]
    path, got = _read(sample, damaged)
    assert isinstance(got, EncodingError), f"invalid UTF-8 accepted or misreported: {got!r}"
    assert got.line == good.count(b"\n", 0, pos) + 1
    assert f"{path}:{got.line}:" in str(got)


TRICKY_LABELS = ["2", "-1", "1 ", " 0", "01", "1.0", "True", "entailment ", "Entailment", "neutral", "0_1", "1_0",
                 "\u0663", "\uff13", " 3", "3 ", "3\u00a0", "nan", "inf", "-inf", "1e0", "5.0000001", "-0.5", "+2",
                 ".5", "5.", "0x1", "", "4,5", "1/2"]
LABEL_NOISE = st.one_of(st.sampled_from(TRICKY_LABELS), TEXT,
                        st.floats(-1, 6).map(repr))


def _with_label(sample: Sample, r: int, value: str) -> Sample:
    rows = [list(x) for x in sample.rows]
    rows[r][sample.layout.columns.index(sample.layout.label)] = value
    return Sample(sample.layout, rows, sample.bom, sample.crlf, sample.final_newline)


def _check_label(sample: Sample, r: int, value: str) -> None:
    lay = sample.layout
    damaged = _with_label(sample, r, value)
    path, got = _read(sample, damaged.to_bytes())
    if lay.labels is not None:
        valid = value in lay.labels
    else:  # a plain ASCII decimal number in [0, 5]
        valid = bool(DECIMAL.match(value)) and 0.0 <= float(value) <= 5.0
    if valid:
        assert not isinstance(got, DataError), f"valid label {value!r} refused: {got}"
        assert _same(got, damaged.expected())
    else:
        shown = got if isinstance(got, DataError) else got["label"][r]
        assert isinstance(got, LabelError), f"label {value!r} accepted as {shown!r}"
        assert got.line == sample.first_data_line + r and f"{path}:{got.line}:" in str(got)


@pytest.mark.parametrize("task", sorted(LAYOUTS))
@settings(max_examples=60, deadline=None)
@given(data=st.data(), value=LABEL_NOISE)
def test_labels_outside_the_set_are_refused_at_their_line(task, data, value):
    sample = data.draw(samples(layouts=(task,)), label="sample")
    r = data.draw(st.integers(0, len(sample.rows) - 1), label="row")
    rows = _with_label(sample, r, value).rows
    if sample.layout.header is None:  # still not blank, and no header look-alike in row 1
        assume("sentence" not in rows[0] and any(x.strip() for row in rows for x in row))
    _check_label(sample, r, value)


@pytest.mark.parametrize("task", sorted(LAYOUTS))
@pytest.mark.parametrize("value", TRICKY_LABELS)
def test_tricky_labels_table(task, value):
    lay = LAYOUTS[task]
    cols = {c: ("3.0" if lay.labels is None else lay.labels[0]) if c == lay.label else "text" for c in lay.columns}
    sample = Sample(lay, [list(cols.values()), list(cols.values())], False, False, True)
    _check_label(sample, 1, value)


@SETTINGS
@given(st.sampled_from(sorted(LAYOUTS)), st.text(st.sampled_from(" \t\r\n\ufeff"), max_size=8))
def test_empty_or_blank_files_are_refused_naming_the_file(task, blank):
    path, got = _read(Sample(LAYOUTS[task], [], False, False, False), blank.encode())
    assert isinstance(got, DataError), f"blank file accepted: {got}"
    assert str(path) in str(got)


@pytest.mark.parametrize("task", sorted(LAYOUTS))
def test_header_only_file_is_refused(task, tmp_path):
    lay = LAYOUTS[task]
    if lay.header is None:
        pytest.skip("headerless layout")
    path = tmp_path / "train.tsv"
    path.write_text("\t".join(lay.header) + "\n")
    with pytest.raises(DataLayoutError, match=re.escape(str(path))):
        read_glue_tsv(task, path, "train")
