"""Issue 27 items 1 and 6 (part): where `export`, `predict` and `evaluate` may write, `export --opset`, a full
disk during `export` (exit 6, the previous export intact), `--trust_unverified` for compact SPS folders.

Every command here runs through the CLI in this process (exit code, the last stderr line, the files on disk
before and after)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch
from reliab_helpers import cli

from dist_peakd.integrity import EXPORT_MANIFEST, verify_export

LABELS = ["not_equivalent", "equivalent"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_bert) -> Path:
    """A run folder holding a compact SPS student (``mrpc/distill/final``, task and length recorded) and other
    work of the run (a teacher folder, a note), as the stages leave it."""
    from transformers import AutoTokenizer

    from dist_peakd.export import export_compact
    from dist_peakd.models import build_student

    root = tmp_path_factory.mktemp("outputs") / "run"
    torch.manual_seed(0)
    student = build_student(tiny_bert, k=2, variant="shuffle", num_labels=2).eval()
    record = {"task": "mrpc", "max_length": 24, "label_names": LABELS}
    export_compact(student, root / "mrpc" / "distill" / "final", AutoTokenizer.from_pretrained(str(tiny_bert)),
                   label_names=LABELS, extra_files={"dist_peakd.json": record})
    (root / "mrpc" / "teacher").mkdir()
    (root / "mrpc" / "teacher" / "notes.txt").write_text("the run's other work\n")
    return root


@pytest.fixture()
def glue_copy(tmp_path, glue_dir) -> Path:
    """The MRPC files in a GLUE folder of this test (refusals name its files; nothing may touch the real one)."""
    root = tmp_path / "glue"
    shutil.copytree(glue_dir / "MRPC", root / "MRPC")
    return root


def _model(run_dir: Path) -> Path:
    return run_dir / "mrpc" / "distill" / "final"


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _opts(model: Path, tmp_path: Path, glue: Path, **kw) -> dict:
    return {"model_dir": str(model), "glue_dir": str(glue), "cache_dir": str(tmp_path / "tok"),
            "output_dir": str(tmp_path / "runs"), **kw}


def _refused(capsys, stage: str, opts: dict, expected: str, code: int = 2) -> str:
    got, err = cli(stage, opts, capsys)
    last = err.strip().splitlines()[-1]
    assert got == code, err
    assert expected in last, err
    assert "Traceback" not in err
    return last


# ------------------------------------------------------------------------------------------- export --out
def test_export_writes_a_new_folder_and_replaces_only_its_own_export_of_that_format(run_dir, tmp_path, glue_copy,
                                                                                     capsys):
    out = tmp_path / "ship" / "hf"
    opts = _opts(_model(run_dir), tmp_path, glue_copy, out=str(out))
    assert cli("export", opts, capsys)[0] == 0
    verify_export(out)
    first = _tree(out)
    assert cli("export", opts, capsys)[0] == 0  # its own previous export: replaced
    assert _tree(out) == first
    _refused(capsys, "export", dict(opts, format="plain"),
             f"option out: {str(out)!r} holds a `dist-peakd export --format hf` export, not --format plain")
    (out / "mine.txt").write_text("the user's\n")
    _refused(capsys, "export", opts, f"option out: {str(out)!r} holds a previous hf export plus files it did not "
                                     "write ('mine.txt')")
    assert _tree(out) == {**first, "mine.txt": b"the user's\n"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("export", dict(opts, out=str(empty)), capsys)[0] == 0  # an empty folder holds nothing to lose
    verify_export(empty)
    assert [p.name for d in (tmp_path, out.parent) for p in d.iterdir() if p.name.startswith(".")] == []  # no .tmp-


def test_export_never_replaces_the_users_files_or_the_run_folder(run_dir, tmp_path, glue_copy, capsys, monkeypatch):
    model = _model(run_dir)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    before_run, before_tmp = _tree(run_dir), sorted(p.name for p in tmp_path.iterdir())
    cases = [
        (user, f"option out: {str(user)!r} already exists and is not a folder `dist-peakd export` wrote"),
        (model.parent, "is a folder above the model folder"),
        (run_dir, f"option out: {str(run_dir)!r} is a folder above the model folder (--model_dir) ({model})"),
        (run_dir / "mrpc", "is a folder above the model folder (--model_dir)"),
        (model, f"option out: {str(model)!r} is the model folder (--model_dir), an input of this command"),
        (model / "sub", f"option out: {str(model / 'sub')!r} is inside the model folder (--model_dir)"),
        (a_file, f"option out: {str(a_file)!r} is a file; expected a new folder"),
        (a_file / "x", f"option out: {a_file} is a file, not a folder"),
        (tmp_path / "tok" / "x" / "..", f"is the tokenization cache ({tmp_path / 'tok'})"),
        (tmp_path, "is a folder above the train file of mrpc"),
    ]
    for out, expected in cases:
        _refused(capsys, "export", _opts(model, tmp_path, glue_copy, out=str(out)), expected)
    monkeypatch.chdir(run_dir / "mrpc")
    _refused(capsys, "export", _opts(model, tmp_path, glue_copy, out="."),
             f"option out: '.' is a folder above the model folder (--model_dir) ({model})")
    monkeypatch.chdir(user)
    _refused(capsys, "export", _opts(model, tmp_path, glue_copy, out="."),
             f"option out: '.' is the current directory ({user})")
    assert _tree(run_dir) == before_run and (user / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before_tmp  # nothing written, no folder made


# ------------------------------------------------------------------------------------------- predict / evaluate
def test_predict_and_evaluate_refuse_an_output_that_is_an_input(run_dir, tmp_path, glue_copy, capsys):
    model = _model(run_dir)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sentence1\tsentence2\nA cat sat.\tA cat was sitting.\n")
    inputs = {p: p.read_bytes() for p in [pairs, *sorted((glue_copy / "MRPC").iterdir())]}
    before_run = _tree(run_dir)
    test_tsv, dev_tsv = glue_copy / "MRPC" / "test.tsv", glue_copy / "MRPC" / "dev.tsv"
    _refused(capsys, "predict", _opts(model, tmp_path, glue_copy, input=str(pairs), out=str(pairs)),
             f"option out: {str(pairs)!r} is the --input file, an input of this command")
    _refused(capsys, "predict", _opts(model, tmp_path, glue_copy, out=str(test_tsv)),
             f"option out: {str(test_tsv)!r} is the test file of mrpc, an input of this command")
    _refused(capsys, "predict", _opts(model, tmp_path, glue_copy, out=str(model / "p.tsv")),
             f"option out: {str(model / 'p.tsv')!r} is inside the model folder (--model_dir)")
    _refused(capsys, "evaluate", _opts(model, tmp_path, glue_copy, out=str(dev_tsv)),
             f"option out: {str(dev_tsv)!r} is the dev file of mrpc, an input of this command")
    _refused(capsys, "evaluate", _opts(model, tmp_path, glue_copy, out=str(model / "config.json")),
             "is inside the model folder (--model_dir)")
    _refused(capsys, "evaluate", _opts(model, tmp_path, glue_copy, out=str(tmp_path)),
             f"option out: {str(tmp_path)!r} is a folder; expected a file name")
    assert {p: p.read_bytes() for p in inputs} == inputs and _tree(run_dir) == before_run
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tok").exists()


# ------------------------------------------------------------------------------------------- --opset
@pytest.mark.parametrize(("kw", "expected"), [
    ({"format": "onnx", "opset": 7}, "option opset: 7 is outside the supported range 17..25"),
    ({"format": "onnx", "opset": 26}, "option opset: 26 is outside the supported range 17..25"),
    ({"format": "plain", "opset": 18}, "option opset: applies to --format onnx, not plain"),
])
def test_export_refuses_an_opset_it_cannot_write(run_dir, tmp_path, glue_copy, capsys, kw, expected):
    out = tmp_path / "onnx"
    _refused(capsys, "export", _opts(_model(run_dir), tmp_path, glue_copy, out=str(out), **kw), expected)
    assert not out.exists()


# ------------------------------------------------------------------------------------------- disk full
class SafetensorError(Exception):
    """What safetensors raises on a failed write: not an OSError, the errno only in its text."""


_ENOSPC = OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(("fmt", "target", "error"), [
    ("hf", "dist_peakd.export.hf.save_tokenizer", _ENOSPC),
    ("hf", "dist_peakd.export.hf.mark_fp32",
     SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left '
                     'on device" })')),
    ("plain", "dist_peakd.export.folder.write_export_manifest", _ENOSPC),
])
def test_disk_full_during_an_hf_export_is_exit_6_and_keeps_the_previous_export(run_dir, tmp_path, glue_copy, capsys,
                                                                               monkeypatch, fmt, target, error):
    out = tmp_path / "ship" / fmt
    opts = _opts(_model(run_dir), tmp_path, glue_copy, out=str(out), format=fmt)
    assert cli("export", opts, capsys)[0] == 0
    previous = _tree(out)
    monkeypatch.setattr(target, _failing(error))
    _refused(capsys, "export", opts, f"error: writing export {out} failed: no space left on device (ENOSPC); the "
                                     f"previous export in {out} is untouched", code=6)
    assert _tree(out) == previous
    verify_export(out)
    assert sorted(p.name for p in out.parent.iterdir()) == [fmt]  # no .tmp- folder left
    new = tmp_path / "new" / "deeper" / fmt
    _refused(capsys, "export", dict(opts, out=str(new)), f"writing export {new} failed: no space left on device "
                                                         "(ENOSPC); nothing was written", code=6)
    assert not (tmp_path / "new").exists()  # not even the parent folders it made


def test_onnx_export_honours_the_opset_and_a_full_disk_is_exit_6_keeping_the_previous_export(run_dir, tmp_path,
                                                                                              glue_copy, capsys,
                                                                                              monkeypatch):
    from dist_peakd.errors import ConfigError
    from dist_peakd.export.onnx import ONNX_FILE, _check_opset, graph_opset

    out = tmp_path / "ship" / "onnx"
    opts = _opts(_model(run_dir), tmp_path, glue_copy, out=str(out), format="onnx", quantize="int8", verify_rows=8,
                 opset=17)
    assert cli("export", opts, capsys)[0] == 0
    assert graph_opset(out / ONNX_FILE) == 17  # honoured (torch.onnx writes 18+ and converts down)
    with pytest.raises(ConfigError, match="option opset: 18 was asked, torch.onnx wrote opset 17"):
        _check_opset(out / ONNX_FILE, 18)  # what a failed down-conversion (it keeps 18) is refused by
    previous = _tree(out)
    for target in ("dist_peakd.export.onnx.export_onnx_file", "dist_peakd.export.onnx.quantize_int8"):
        with monkeypatch.context() as patch:
            patch.setattr(target, _failing(_ENOSPC))
            _refused(capsys, "export", opts, f"error: writing export {out} failed: no space left on device", code=6)
        assert _tree(out) == previous, target
        assert sorted(p.name for p in out.parent.iterdir()) == ["onnx"], target


def _failing(error: BaseException):
    """A writer that leaves a partial file in the folder it was writing to, then fails with ``error``."""
    def write(*args, **kwargs):
        for arg in args:
            path = Path(arg) if isinstance(arg, (str, Path)) else None
            if path is not None and path.is_dir():
                (path / "partial.bin").write_bytes(b"\0" * 10)
            elif path is not None and path.parent.is_dir():
                path.write_bytes(b"\0" * 10)
        raise error
    return write


# ------------------------------------------------------------------------------------------- --trust_unverified
def test_trust_unverified_opens_a_compact_sps_folder_without_its_manifest(run_dir, tmp_path, glue_copy, capsys):
    model = tmp_path / "final"
    shutil.copytree(_model(run_dir), model)
    (model / EXPORT_MANIFEST).unlink()
    base = _opts(model, tmp_path, glue_copy, max_eval_examples=8)
    _refused(capsys, "evaluate", base, f"{model / EXPORT_MANIFEST}: missing", code=4)
    _refused(capsys, "export", dict(base, out=str(tmp_path / "plain"), format="plain"),
             f"{model / EXPORT_MANIFEST}: missing", code=4)
    assert not (tmp_path / "plain").exists()
    assert cli("evaluate", dict(base, trust_unverified=True), capsys)[0] == 0
    assert cli("export", dict(base, out=str(tmp_path / "plain"), format="plain", trust_unverified=True), capsys)[0] == 0
    verify_export(tmp_path / "plain")
