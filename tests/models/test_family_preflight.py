"""Issue 23 item 5: a teacher and a student that cannot work together are refused before any stage trains, in
one line naming both checkpoints and what to do, exit 2, nothing written: two tokenizers (a RoBERTa teacher
with a BERT backbone: the issue's "rerun cache-teacher with --rebuild" loop), a family no teacher code
runs, two widths under Patient-KD, a k beyond the backbone's depth. (Label sets that cannot be matched:
tests/models/test_teacher_families.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from family_models import make_family_backbone
from reliab_helpers import args_of, run_cli, slice_opts

from dist_peakd.models import families


def _tree(folder: Path) -> list[str] | None:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else None


def _refused(capsys, stage: str, opts: dict, *expected: str) -> str:
    """``stage`` ends with exit 2 and one line holding every ``expected`` text, no traceback; the output and
    tokenization cache folders are as they were."""
    watched = [Path(opts["output_dir"]), Path(opts.get("cache_dir", opts["output_dir"]))]
    before = [_tree(f) for f in watched]
    code, _, err = run_cli([stage, *args_of(opts)], capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err, err
    assert all(text in lines[-1] for text in expected), err
    assert [_tree(f) for f in watched] == before
    return lines[-1]


def _classifier(folder: Path, backbone: Path, task_names: list[str]) -> Path:
    """A fine-tuned-looking classifier of ``backbone`` (random head, the task's class names, its tokenizer)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(backbone), num_labels=len(task_names))
    model.config.id2label = dict(enumerate(task_names))
    model.config.label2id = {n: i for i, n in enumerate(task_names)}
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(backbone)).save_pretrained(str(folder))
    return folder


MRPC = ["not_equivalent", "equivalent"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    from transformers import AlbertConfig, AlbertForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("family_preflight")
    roberta = make_family_backbone("roberta", root / "roberta")
    wide = root / "wide_bert"  # the tiny BERT's tokenizer, 48 wide
    from conftest import make_tiny_bert

    make_tiny_bert(wide, tiny_bert, hidden=48, heads=4)
    albert = root / "albert"
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    AlbertForSequenceClassification(AlbertConfig(vocab_size=len(tok), embedding_size=16, hidden_size=32,
                                                 num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                                                 num_labels=2)).save_pretrained(str(albert))
    tok.save_pretrained(str(albert))
    return {"roberta": roberta, "roberta_teacher": _classifier(root / "roberta_teacher", roberta, MRPC),
            "wide_teacher": _classifier(root / "wide_teacher", wide, MRPC), "albert_teacher": albert}


@pytest.mark.parametrize("stage", ["pipeline", "cache-teacher", "distill", "sweep"])
def test_a_roberta_teacher_with_a_bert_backbone_names_the_two_tokenizers(tmp_path, capsys, glue_dir, tiny_bert,
                                                                         models, stage):
    extra = {"space": '{"temperature": [2, 5]}'} if stage == "sweep" else {}
    extra.update({"use_ptp": False} if stage == "distill" else {})
    teacher = models["roberta_teacher"]
    opts = slice_opts(tmp_path / "run", tiny_bert, glue_dir, teacher_dir=str(teacher), **extra)
    line = _refused(capsys, stage, opts, f"option teacher_dir: the teacher {teacher} and the backbone {tiny_bert} use "
                    "two different tokenizers (a 'roberta' teacher, a 'bert' backbone)",
                    "must share the teacher's tokenizer", "give as --backbone the checkpoint the teacher was "
                    "fine-tuned from")
    assert "--rebuild" not in line


def test_the_issues_rebuild_loop_is_gone(tmp_path, capsys, glue_dir, tiny_bert, models, monkeypatch):
    """The issue's report: a RoBERTa teacher fine-tuned and cached in the run folder, then distil with a BERT
    backbone. Before: 'rerun cache-teacher with --rebuild', and the rebuild failed the same way. Now distill,
    and cache-teacher --rebuild, name the two tokenizers; the teacher and its cache are left as they were."""
    monkeypatch.setattr(families, "STUDENT_BACKBONE_TYPES", families.TEACHER_TYPES)  # the student's business
    opts = slice_opts(tmp_path / "run", models["roberta"], glue_dir, max_train_examples=16, max_eval_examples=8)
    for stage in ("finetune-teacher", "cache-teacher"):
        code, _, err = run_cli([stage, *args_of(opts)], capsys)
        assert code == 0, err
    teacher = tmp_path / "run" / "mrpc" / "teacher" / "best"
    with_bert = dict(opts, backbone=str(tiny_bert))
    for stage, extra in (("distill", {"k": 1, "use_ptp": False}), ("cache-teacher", {"rebuild": True})):
        line = _refused(capsys, stage, dict(with_bert, **extra), f"the teacher {teacher} and the backbone {tiny_bert}",
                        "two different tokenizers", "must share the teacher's tokenizer")
        assert "--rebuild" not in line


def test_a_family_no_teacher_code_runs_is_refused_with_the_supported_list(tmp_path, capsys, glue_dir, tiny_bert,
                                                                          models):
    teacher = models["albert_teacher"]
    for stage in ("cache-teacher", "pipeline"):
        opts = slice_opts(tmp_path / "run", tiny_bert, glue_dir, teacher_dir=str(teacher))
        _refused(capsys, stage, opts, f"option teacher_dir: {teacher} has model_type 'albert'; a teacher must be one "
                 f"of {list(families.TEACHER_TYPES)}")


@pytest.mark.parametrize("stage", ["pipeline", "distill"])
def test_a_teacher_of_another_width_is_refused_under_patient_kd(tmp_path, capsys, glue_dir, tiny_bert, models, stage):
    teacher = models["wide_teacher"]
    extra = {"k": 1, "use_ptp": False} if stage == "distill" else {}
    opts = slice_opts(tmp_path / "run", tiny_bert, glue_dir, teacher_dir=str(teacher), **extra)
    _refused(capsys, stage, opts, f"option teacher_dir: the teacher {teacher} is 48 wide, the backbone {tiny_bert} 32",
             "Patient-KD", "--beta 0")


def test_without_patient_kd_a_teacher_of_another_width_passes_the_preflight(tmp_path, glue_dir, tiny_bert, models):
    from dist_peakd.config import build_options
    from dist_peakd.stages.pipeline import PipelineOptions
    from dist_peakd.stages.preflight import check_models

    opts = slice_opts(tmp_path / "run", tiny_bert, glue_dir, teacher_dir=str(models["wide_teacher"]), beta=0)
    check_models(build_options(PipelineOptions, **opts), "pipeline")
    assert not (tmp_path / "run").exists()


def test_a_k_beyond_a_family_backbone_is_refused_before_the_teacher_trains(tmp_path, capsys, glue_dir, models,
                                                                            monkeypatch):
    monkeypatch.setattr(families, "STUDENT_BACKBONE_TYPES", families.TEACHER_TYPES)  # the student's business
    backbone = models["roberta"]
    _refused(capsys, "pipeline", slice_opts(tmp_path / "run", backbone, glue_dir, k=5),
             f"option k: student depth 5 exceeds the backbone's 2 layers ({backbone})", "choose --k from 1 to 2")


def test_the_cache_of_a_wider_teacher_is_refused_by_distill(tmp_path, capsys, glue_dir, tiny_bert):
    """No teacher folder, only its cache (the manifest records the width): the same refusal."""
    cache = tmp_path / "run" / "mrpc" / "teacher_cache"
    cache.mkdir(parents=True)
    from transformers import AutoTokenizer

    from dist_peakd.data import tokenizer_fingerprint

    tokens = tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tiny_bert)))
    (cache / "manifest.json").write_text(json.dumps({"tokenizer_fingerprint": tokens, "hidden_size": 64,
                                                     "teacher_dir": "/elsewhere/teacher"}))
    opts = slice_opts(tmp_path / "run", tiny_bert, glue_dir, k=1, use_ptp=False)
    _refused(capsys, "distill", opts, f"the teacher cache {cache} (teacher /elsewhere/teacher) is 64 wide",
             f"the backbone {tiny_bert} 32")
