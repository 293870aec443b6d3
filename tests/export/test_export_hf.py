"""Compact HF export of the SPS student: self-contained code, auto_map, pipeline, labels, BERT refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

import dist_peakd.models as models_pkg
from dist_peakd.errors import ArtifactWriteError
from dist_peakd.export import CODE_FILES, ExportError, export_compact, load_model_folder
from dist_peakd.models import SPSBertConfig, SPSBertForSequenceClassification, build_student

PAIRS = [("The cat sat on the mat.", "A cat was sitting on the mat."),
         ("Stocks fell sharply on Monday.", "The weather was sunny and warm.")]
LABELS = ["not_equivalent", "equivalent"]


@pytest.fixture(scope="module")
def student(tiny_bert: Path) -> SPSBertForSequenceClassification:
    torch.manual_seed(3)
    model = build_student(tiny_bert, k=2, variant="shuffle", num_labels=2).eval()
    with torch.no_grad():  # a head that separates the pairs (a fresh head gives near-equal logits)
        model.classifier.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def compact_dir(tmp_path_factory, student, tiny_bert: Path) -> Path:
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    return export_compact(student, tmp_path_factory.mktemp("exp") / "compact", tokenizer=tok, label_names=LABELS)


def _logits(model, tok, pairs) -> torch.Tensor:
    enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def test_compact_folder_files_and_config(compact_dir: Path) -> None:
    names = {p.name for p in compact_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "dist_peakd_files.json", *CODE_FILES} <= names
    assert not any(n.startswith(".tmp") for n in names)
    pkg = Path(models_pkg.__file__).parent
    for name in CODE_FILES:  # copied verbatim from the package: one implementation
        assert (compact_dir / name).read_bytes() == (pkg / name).read_bytes()
    cfg = json.loads((compact_dir / "config.json").read_text())
    assert cfg["model_type"] == "sps-bert"
    assert cfg["auto_map"] == {"AutoConfig": "configuration_sps_bert.SPSBertConfig",
                               "AutoModelForSequenceClassification": "modeling_sps_bert.SPSBertForSequenceClassification"}
    assert cfg["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    assert cfg["label2id"] == {"not_equivalent": 0, "equivalent": 1}
    assert cfg["num_hidden_layers"]["parameter_layers"] == 2 and cfg["num_hidden_layers"]["effective_layers"] == 4
    tok_cfg = json.loads((compact_dir / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tok_cfg and "is_local" not in tok_cfg


def test_loads_and_pipelines_without_dist_peakd(compact_dir: Path, student, tiny_bert: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    want = _logits(student, tok, PAIRS)
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["dist_peakd"] = None
        try:
            import dist_peakd  # noqa
            raise SystemExit("dist_peakd importable")
        except ImportError:
            pass
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
        from transformers.modeling_outputs import SequenceClassifierOutput
        d = {str(compact_dir)!r}
        model = AutoModelForSequenceClassification.from_pretrained(d, trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained(d, trust_remote_code=True)
        clf = pipeline("text-classification", model=d, trust_remote_code=True)
        pairs = {PAIRS!r}
        res = clf([{{"text": a, "text_pair": b}} for a, b in pairs], top_k=None, function_to_apply="none")
        enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc, labels=torch.tensor([0, 1]), output_hidden_states=True)
        print(json.dumps({{
            "module": type(model).__module__,
            "pipeline": [{{r["label"]: r["score"] for r in row}} for row in res],
            "predicted": [max(row, key=lambda r: r["score"])["label"] for row in res],
            "logits": out.logits.tolist(), "is_sco": isinstance(out, SequenceClassifierOutput),
            "loss": float(out.loss), "hidden": len(out.hidden_states), "cls": len(out.cls_states),
        }}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["module"].startswith("transformers_modules.")
    assert got["is_sco"] and got["hidden"] == 5 and got["cls"] == 4
    torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=1e-5, rtol=1e-5)
    pipe = torch.tensor([[row[name] for name in LABELS] for row in got["pipeline"]])
    torch.testing.assert_close(pipe, want, atol=1e-5, rtol=1e-5)
    assert got["predicted"] == [LABELS[i] for i in want.argmax(-1).tolist()]
    assert got["loss"] == pytest.approx(float(F.cross_entropy(want, torch.tensor([0, 1]))), rel=1e-5)


@pytest.mark.parametrize("variant", ["shuffle", "share"])
def test_plain_bert_refuses_compact_sps_folder(tmp_path: Path, tiny_bert: Path, variant: str) -> None:
    student = build_student(tiny_bert, k=2, variant=variant)
    out = export_compact(student, tmp_path / variant, tokenizer=AutoTokenizer.from_pretrained(str(tiny_bert)))
    with pytest.raises(Exception, match="(?s)num_hidden_layers.*expected int.*2 parameter layers run as 4 effective"
                                        ".*trust_remote_code=True"):
        BertForSequenceClassification.from_pretrained(str(out))
    assert AutoTokenizer.from_pretrained(str(out)) is not None  # the base-config fallback still reads it


def test_plain_bert_loads_none_variant_identically(tmp_path: Path, tiny_bert: Path) -> None:
    student = build_student(tiny_bert, k=3, variant="none").eval()
    out = export_compact(student, tmp_path / "none")
    plain = BertForSequenceClassification.from_pretrained(str(out)).eval()
    ids = torch.randint(1, 1000, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        torch.testing.assert_close(plain(ids, mask).logits, student(ids, mask).logits, atol=1e-5, rtol=1e-5)


def test_same_length_permuted_schedule_is_refused_by_bert_too(tmp_path: Path) -> None:
    cfg = SPSBertConfig(vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                        num_hidden_layers=2, sps_schedule=[[1, False], [0, True]])
    model = SPSBertForSequenceClassification(cfg).eval()
    out = export_compact(model, tmp_path / "perm")
    with pytest.raises(Exception, match="expected int"):
        BertForSequenceClassification.from_pretrained(str(out))
    again, _ = load_model_folder(out)
    assert again.schedule == [(1, False), (0, True)] and again.config.num_hidden_layers == 2


def test_forward_keywords_return_dict_hidden_states_loss(student) -> None:
    ids = torch.randint(1, 1000, (3, 6))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        tup = student(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]), return_dict=False)
    assert isinstance(out, SequenceClassifierOutput) and out.loss is None
    assert len(out.hidden_states) == student.num_effective_layers + 1
    for h, c in zip(out.hidden_states[1:], out.cls_states, strict=True):
        torch.testing.assert_close(h[:, 0], c)
    assert isinstance(tup, tuple)
    torch.testing.assert_close(tup[0], F.cross_entropy(out.logits, torch.tensor([0, 1, 1])))
    torch.testing.assert_close(tup[1], out.logits)
    assert out["logits"] is out.logits  # subscriptable, as pipelines use it


def test_label_names_must_match_outputs(tmp_path: Path, student) -> None:
    with pytest.raises(ExportError, match="3 names, the model has 2 outputs"):
        export_compact(student, tmp_path / "bad", label_names=["a", "b", "c"])
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".tmp-bad").exists()


def test_failed_export_keeps_previous_folder(tmp_path: Path, student, compact_dir: Path) -> None:
    out = tmp_path / "keep"
    export_compact(student, out, label_names=LABELS)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class BrokenTokenizer:
        def save_pretrained(self, folder: str) -> None:
            raise OSError(28, "No space left on device")

    with pytest.raises(ArtifactWriteError, match=f"writing export {out} failed: no space left on device"):
        export_compact(student, out, tokenizer=BrokenTokenizer())  # exit 6, naming the folder
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / ".tmp-keep").exists()


def test_stage_style_save_pretrained_is_loadable_and_reloads(tmp_path: Path, student, compact_dir: Path) -> None:
    student.save_pretrained(str(tmp_path / "stage"))  # what Engine.export_pretrained calls
    assert all((tmp_path / "stage" / n).is_file() for n in CODE_FILES)
    model, tok = load_model_folder(compact_dir)
    assert isinstance(model, SPSBertForSequenceClassification) and tok is not None
    assert model.config.id2label == {0: "not_equivalent", 1: "equivalent"}
    with pytest.raises(ExportError, match="no config.json"):
        load_model_folder(tmp_path)
