"""Issue 23 item 1: a teacher of every supported encoder family (tiny random checkpoints, each with a tokenizer
of its own kind) is fine-tuned, cached and evaluated; what differs per family (segment ids, SDPA or eager
attention, head names, the per-layer [CLS] states) is handled; a fine-tuned classifier given with
``--teacher_dir`` keeps its own classes, matched to the task's by name (or by index for generic names), or
is refused naming both label sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from family_models import FAMILIES, family_tokenizer, make_family_backbone
from reliab_helpers import args_of, run_cli, slice_opts

from dist_peakd.models import ModelConfigError, families

#: the families whose classifiers take segment ids (a segment embedding of 2 types); every other one runs
#: without them (RoBERTa-likes: 1 type, DeBERTa-v3: none, DistilBERT/ModernBERT/MPNet: no such input)
SEGMENT_FAMILIES = {"bert", "electra"}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family_backbones")
    return {family: make_family_backbone(family, root / family) for family in FAMILIES}


@pytest.fixture
def every_family_a_student_backbone(monkeypatch):
    """The backbone is also what the SPS student is built from; which families that supports is the student's
    business (issue 23 items 2/3, ``families.STUDENT_BACKBONE_TYPES``). Here every teacher family is admitted
    as one, so the teacher's stages are tested on their own."""
    monkeypatch.setattr(families, "STUDENT_BACKBONE_TYPES", families.TEACHER_TYPES)


def test_every_family_is_a_teacher_family_and_tested():
    assert set(families.TEACHER_TYPES) == set(FAMILIES)
    for family in FAMILIES:
        assert families.family_refusal("teacher", "teacher_dir", "x", family) is None
    assert "a teacher must be one of" in families.family_refusal("teacher", "teacher_dir", "x", "albert")


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forward_gives_logits_and_every_layers_cls_per_family(backbones, family, capsys):
    """[CLS] (position 0) after each of the L layers, segment ids only where the family embeds them, SDPA
    attention where the family has it; the new head (DistilBERT's pre_classifier, DeBERTa's pooler,
    ModernBERT's head included) is reported as the head, not warned about as missing weights."""
    from dist_peakd.models import load_teacher, teacher_forward
    from dist_peakd.models.teacher import uses_token_types

    torch.manual_seed(0)
    capsys.readouterr()
    model = load_teacher(backbones[family], num_labels=3).eval()
    said = capsys.readouterr()
    assert "teacher: new 3-label head" in said.out and "warning" not in said.out + said.err
    assert uses_token_types(model) == (family in SEGMENT_FAMILIES)
    assert model.config._attn_implementation == ("eager" if family in ("deberta-v2", "mpnet") else "sdpa")
    tok = family_tokenizer(family)
    batch = tok(["the market rose", "he said"], ["shares fell", "no"], padding=True, return_tensors="pt",
                return_token_type_ids=True)
    with torch.no_grad():
        out = teacher_forward(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        segments = {"token_type_ids": batch["token_type_ids"]} if family in SEGMENT_FAMILIES else {}
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                    **segments)
    assert out.logits.shape == (2, 3) and len(out.cls_states) == model.config.num_hidden_layers == 2
    assert len(ref.hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(out.logits, ref.logits)
    for cls, hidden in zip(out.cls_states, ref.hidden_states[1:], strict=True):
        torch.testing.assert_close(cls, hidden[:, 0])


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_cache_and_evaluate_a_teacher_of_every_family(tmp_path, capsys, glue_dir, backbones, family,
                                                               every_family_a_student_backbone):
    """finetune-teacher -> cache-teacher -> evaluate through the CLI: a teacher folder of the family with the
    task's class names, a cache of [n, L, H] [CLS] states, and evaluate's dev metrics equal to the ones the
    cache computed from its own logits (the same model, the same dev rows, two code paths)."""
    from dist_peakd.cache.store import TeacherCache

    opts = slice_opts(tmp_path / "run", backbones[family], glue_dir, max_train_examples=16, max_eval_examples=12,
                      max_length=32)
    for stage in ("finetune-teacher", "cache-teacher"):
        code, _, err = run_cli([stage, *args_of(opts)], capsys)
        assert code == 0, err
    best = tmp_path / "run" / "mrpc" / "teacher" / "best"
    config = json.loads((best / "config.json").read_text())
    assert config["model_type"] == family
    assert config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    cache = TeacherCache.open(tmp_path / "run" / "mrpc" / "teacher_cache", verify="size")
    assert (cache.num_layers, cache.hidden_size, cache.num_labels) == (2, 32, 2)
    train = cache.split("train")
    logits, cls = train.lookup(train.ids)
    assert tuple(cls.shape) == (16, 2, 32) and tuple(logits.shape) == (16, 2)
    assert torch.isfinite(cls.float()).all() and cls.float().std() > 0
    out = tmp_path / "eval.json"
    code, _, err = run_cli(["evaluate", f"--model_dir={best}", f"--glue_dir={glue_dir}", "--max_eval_examples=12",
                            "--max_length=32", f"--cache_dir={tmp_path / 'tok'}", f"--out={out}"], capsys)
    assert code == 0, err
    evaluated = json.loads(out.read_text())["metrics"]
    for name, value in cache.teacher_dev_metrics.items():
        assert evaluated[name] == pytest.approx(value, abs=1e-6), name


# ------------------------------------------------------------------------------ --teacher_dir: its own classes
def test_label_names_are_matched_by_name_by_index_or_refused():
    from dist_peakd.models.teacher_labels import match_labels

    task = ["not_equivalent", "equivalent"]
    assert match_labels(["Not_Equivalent", "EQUIVALENT"], task, "t", "mrpc").how == "same"
    swapped = match_labels(["equivalent", "not_equivalent"], task, "t", "mrpc")
    assert swapped.order == (1, 0) and swapped.how == "by_name"
    assert "not_equivalent = its output 1" in swapped.note
    generic = match_labels(["LABEL_0", "LABEL_1"], task, "t", "mrpc")
    assert generic.order == (0, 1) and generic.how == "by_index" and "generically (LABEL_0, LABEL_1)" in generic.note
    three = ["entailment", "neutral", "contradiction"]
    assert match_labels(["contradiction", "entailment", "neutral"], three, "t", "mnli").order == (1, 2, 0)
    with pytest.raises(ModelConfigError) as err:
        match_labels(["no", "yes"], task, "/m/teacher", "mrpc")
    assert "/m/teacher has classes (no, yes), mrpc has (not_equivalent, equivalent)" in str(err.value)
    assert "/m/teacher/config.json" in str(err.value)
    with pytest.raises(ModelConfigError, match=r"has 3 output\(s\) \(a, b, c\), mrpc has 2 classes"):
        match_labels(["a", "b", "c"], task, "t", "mrpc")
    with pytest.raises(ModelConfigError, match="cannot be matched"):
        match_labels(["LABEL_1", "LABEL_0"], task, "t", "mrpc")  # generic names out of order: not an index map


@pytest.mark.parametrize("family", FAMILIES)
def test_reordering_the_head_reorders_the_outputs_in_every_family(backbones, family):
    from dist_peakd.models import load_teacher
    from dist_peakd.models.teacher_labels import LabelMatch, reorder_head

    torch.manual_seed(0)
    model = load_teacher(backbones[family], num_labels=3).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        after = reorder_head(model, LabelMatch((2, 0, 1), "by_name"))(input_ids=ids).logits
    torch.testing.assert_close(after, before[:, [2, 0, 1]])


def _mrpc_classifier(folder: Path, source: Path, names: list[str], swap_rows: bool = False) -> Path:
    """A fine-tuned-looking MRPC classifier from a hub-like folder (no dist-peakd record): ``names`` as its
    id2label; ``swap_rows`` swaps its two output rows (with swapped names: the same model)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(5)
    model = AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=2)
    with torch.no_grad():
        layer = model.classifier
        layer.weight.normal_(0, 1)  # a head whose two outputs differ clearly
        layer.bias.normal_(0, 1)
        if swap_rows:
            layer.weight.copy_(layer.weight.flip(0))
            layer.bias.copy_(layer.bias.flip(0))
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(folder))
    return folder


def _cached_logits(tmp_path: Path, name: str, capsys, opts: dict) -> tuple[np.ndarray, str]:
    opts = dict(opts, output_dir=str(tmp_path / name))
    code, out, err = run_cli(["cache-teacher", *args_of(opts)], capsys)
    assert code == 0, err
    from dist_peakd.cache.store import TeacherCache

    split = TeacherCache.open(tmp_path / name / "mrpc" / "teacher_cache", verify="size").split("train")
    return split.logits().numpy(), out + err


def test_a_teacher_dir_with_its_classes_in_another_order_is_matched_by_name(tmp_path, capsys, glue_dir, tiny_bert):
    """The same classifier saved twice: once naming its outputs as MRPC does, once with the output rows and the
    names swapped. Both caches hold the same logits in MRPC's order; the second run says how it matched.
    (Generic LABEL_i names: by index, tested on evaluate below and in the unit test above.)"""
    ordered = _mrpc_classifier(tmp_path / "ordered", tiny_bert, ["not_equivalent", "equivalent"])
    swapped = _mrpc_classifier(tmp_path / "swapped", tiny_bert, ["equivalent", "not_equivalent"], swap_rows=True)
    base = slice_opts(tmp_path / "unused", tiny_bert, glue_dir, max_train_examples=16, max_eval_examples=8)
    reference, said = _cached_logits(tmp_path, "a", capsys, dict(base, teacher_dir=str(ordered)))
    assert "matched" not in said
    by_name, said = _cached_logits(tmp_path, "b", capsys, dict(base, teacher_dir=str(swapped)))
    assert f"classes of {swapped} (equivalent, not_equivalent) matched to mrpc's by name" in said
    np.testing.assert_allclose(by_name, reference, atol=1e-6)
    assert np.abs(reference[:, 0] - reference[:, 1]).min() > 1e-3  # the order shows in the logits


@pytest.mark.parametrize("stage", ["cache-teacher", "pipeline"])
def test_a_teacher_dir_whose_classes_cannot_be_matched_is_refused_naming_both(tmp_path, capsys, glue_dir, tiny_bert,
                                                                              stage):
    teacher = _mrpc_classifier(tmp_path / "yes_no", tiny_bert, ["no", "yes"])
    opts = slice_opts(tmp_path / "run", tiny_bert, glue_dir, teacher_dir=str(teacher))
    code, out, err = run_cli([stage, *args_of(opts)], capsys)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert f"option teacher_dir: {teacher} has classes (no, yes), mrpc has (not_equivalent, equivalent)" in line
    assert "Traceback" not in err and not (tmp_path / "run").exists() and not (tmp_path / "tok").exists()


def test_evaluate_and_predict_match_a_folders_own_classes_to_the_tasks(tmp_path, capsys, glue_dir, tiny_bert):
    """evaluate/predict on a classifier of another tool: the swapped twin scores and predicts exactly as the
    ordered one; generic names are taken by index with a warning; other names are refused naming both sets."""
    ordered = _mrpc_classifier(tmp_path / "ordered", tiny_bert, ["not_equivalent", "equivalent"])
    swapped = _mrpc_classifier(tmp_path / "swapped", tiny_bert, ["equivalent", "not_equivalent"], swap_rows=True)
    generic = _mrpc_classifier(tmp_path / "generic", tiny_bert, ["label_0", "label_1"])
    results = {}
    for name, folder in (("ordered", ordered), ("swapped", swapped), ("generic", generic)):
        out, preds = tmp_path / f"{name}.json", tmp_path / f"{name}.tsv"
        common = [f"--model_dir={folder}", f"--glue_dir={glue_dir}", "--task=mrpc", "--max_eval_examples=12",
                  f"--cache_dir={tmp_path / 'tok'}"]
        stages = [["evaluate", *common, f"--out={out}"]] + ([] if name == "generic" else [
            ["predict", *common, "--split=dev", f"--out={preds}"]])
        for argv in stages:
            code, _, err = run_cli(argv, capsys)
            assert code == 0, err
        results[name] = (json.loads(out.read_text()), preds.read_text() if preds.exists() else "")
    assert results["swapped"][0]["metrics"] == results["ordered"][0]["metrics"]
    assert results["swapped"][1] == results["ordered"][1] and "not_equivalent" in results["ordered"][1]
    assert any("matched to mrpc's by name" in w for w in results["swapped"][0]["warnings"])
    assert results["generic"][0]["metrics"] == results["ordered"][0]["metrics"]
    assert any("only generically (label_0, label_1)" in w for w in results["generic"][0]["warnings"])
    assert "warnings" not in results["ordered"][0] or not any("matched" in w for w in results["ordered"][0]["warnings"])
    refused = _mrpc_classifier(tmp_path / "yes_no", tiny_bert, ["no", "yes"])
    out = tmp_path / "refused.json"
    code, _, err = run_cli(["evaluate", f"--model_dir={refused}", f"--glue_dir={glue_dir}", "--task=mrpc",
                            f"--out={out}"], capsys)
    assert code == 2 and "Traceback" not in err and not out.exists()
    assert f"option model_dir: {refused} has classes (no, yes), mrpc has (not_equivalent, equivalent)" in \
        err.strip().splitlines()[-1]


def test_finetune_starts_a_kept_head_in_the_tasks_order(tmp_path, tiny_bert):
    """A hub classifier of MRPC with its classes in another order, used as --backbone: its head starts in the
    task's order; a head of other classes is kept as it is (a starting point, not refused)."""
    from dist_peakd.data import get_task
    from dist_peakd.models import load_teacher
    from dist_peakd.stages.finetune_teacher import kept_head_in_task_order

    task = get_task("mrpc")
    ordered = _mrpc_classifier(tmp_path / "ordered", tiny_bert, ["not_equivalent", "equivalent"])
    swapped = _mrpc_classifier(tmp_path / "swapped", tiny_bert, ["equivalent", "not_equivalent"], swap_rows=True)
    other = _mrpc_classifier(tmp_path / "other", tiny_bert, ["negative", "positive"])
    ids = torch.tensor([[101, 2000, 2001, 102]])
    with torch.no_grad():
        want = load_teacher(ordered, 2).eval()(input_ids=ids).logits
        got = kept_head_in_task_order(load_teacher(swapped, 2), task, str(swapped)).eval()(input_ids=ids).logits
        kept = load_teacher(other, 2).eval()
        before = kept(input_ids=ids).logits
        after = kept_head_in_task_order(kept, task, str(other))(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    assert (want[0, 0] - want[0, 1]).abs() > 1e-3
    torch.testing.assert_close(after, before)
