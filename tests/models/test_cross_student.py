"""A student from another pretrained checkpoint (issue 23 item 4, ``--student_backbone``): a tiny BERT teacher
(32 wide, the MiniLM WordPiece vocabulary) and a tiny MPNet student (24 wide, its own tokenizer over another,
tiny vocabulary: it splits most words into letters, so its token rows differ from the teacher's).

- end to end through ``dist-peakd pipeline`` on a GLUE slice: the [CLS] width map trains (its weight moves) and
  is not exported; ``final/`` is a plain ``mpnet`` folder with the student's tokenizer that plain transformers
  loads; its dev loss re-scored from the folder equals the one the run recorded;
- the distillation's teacher lookup uses example ids with the student's own tokens: the rows it gets are the
  teacher's outputs for the same texts;
- the Patient-KD term through the map equals a hand computation; the export path drops the map and gives the
  student's logits;
- refusals before any work: a label-set mismatch (one line naming both checkpoints), SPS options, sweeps.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from reliab_helpers import cli, run_cli, slice_opts


def make_student(folder: Path, hidden: int = 24, layers: int = 2) -> Path:
    """A tiny random MPNet backbone with its own (tiny-vocabulary) tokenizer."""
    from family_models import family_config, family_tokenizer
    from transformers import AutoModel

    tok = family_tokenizer("mpnet")
    torch.manual_seed(1)
    AutoModel.from_config(family_config("mpnet", tok, layers, hidden=hidden)).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_mpnet24(tmp_path_factory) -> Path:
    return make_student(tmp_path_factory.mktemp("tiny_mpnet24"))


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory, tiny_bert, tiny_mpnet24, glue_dir) -> SimpleNamespace:
    """One pipeline: the BERT teacher fine-tuned and cached, the MPNet student PTP-pretrained and distilled."""
    out = tmp_path_factory.mktemp("cross") / "run"
    opts = slice_opts(out, tiny_bert, glue_dir, student_backbone=str(tiny_mpnet24), teacher_epochs=1,
                      ptp_epochs=1, epochs=2, latency_repeats=1, latency_batch_size=4)
    code, _, _ = run_cli(["pipeline", *[f"--{k}={v}" for k, v in opts.items()]])
    assert code == 0
    stages = sorted((out / "mrpc").glob("distill-xmpnet-*"))
    assert len(stages) == 1, sorted(p.name for p in (out / "mrpc").iterdir())
    return SimpleNamespace(out=out, opts=opts, stage=stages[0], student=tiny_mpnet24, teacher_backbone=tiny_bert)


@pytest.mark.slow
def test_cross_width_cross_tokenizer_student_end_to_end(cross_run, tmp_path, capsys):
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    task_dir = cross_run.out / "mrpc"
    assert sorted(p.name for p in task_dir.glob("ptp-*")) == [cross_run.stage.name.split("-d2-")[0]
                                                               .replace("distill-", "ptp-") + "-d2-bot"]
    summary = json.loads((cross_run.stage / "summary.json").read_text())
    width_map = summary["width_map"]
    assert (width_map["student_width"], width_map["teacher_width"]) == (24, 32)
    assert width_map["parameters"] == 24 * 32 + 32 and width_map["exported"] is False
    assert width_map["weight_change"] > 1e-4  # trained with the student (in the optimizer)
    assert summary["student"]["student_backbone"] == str(cross_run.student)
    assert [list(p) for p in summary["layer_map"]] == [[1, 2]]  # E=2 student layers, 4-layer teacher

    final = cross_run.stage / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "mpnet" and config["num_hidden_layers"] == 2 and config["hidden_size"] == 24
    assert not list(final.glob("*.py")) and "auto_map" not in config
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("cls_map" in k for k in keys)
    card = (final / "README.md").read_text()
    assert str(cross_run.student) in card and "teacher" in card

    # the student's own tokenizer went with it (not the teacher's)
    text = "the company said its shares rose"
    exported_tok = AutoTokenizer.from_pretrained(str(final))
    student_ids = AutoTokenizer.from_pretrained(str(cross_run.student))(text)["input_ids"]
    teacher_ids = AutoTokenizer.from_pretrained(str(cross_run.teacher_backbone))(text)["input_ids"]
    assert exported_tok(text)["input_ids"] == student_ids != teacher_ids

    # plain transformers loads it; re-scored by `evaluate`, its dev loss is the one the run recorded
    model = AutoModelForSequenceClassification.from_pretrained(str(final)).eval()
    assert type(model).__name__ == "MPNetForSequenceClassification"
    result = tmp_path / "eval.json"
    code, err = cli("evaluate", {"model_dir": str(final), "glue_dir": cross_run.opts["glue_dir"],
                                 "max_eval_examples": 16, "max_length": 40, "cache_dir": str(tmp_path / "tok"),
                                 "out": str(result)}, capsys)
    assert code == 0, err[-2000:]
    scored = json.loads(result.read_text())["metrics"]
    assert scored["loss"] == pytest.approx(summary["final"]["loss"], abs=1e-5)
    assert scored["accuracy"] == pytest.approx(summary["final"]["accuracy"], abs=1e-9)
    # ONNX as for any folder of its family: the student's own tokenizer goes with the graph
    from dist_peakd.export.onnx import ONNX_FILE

    onnx_dir = tmp_path / "onnx"
    code, err = cli("export", {"model_dir": str(final), "out": str(onnx_dir), "format": "onnx", "verify_rows": 8}, capsys)
    assert code == 0, err[-2000:]
    assert (onnx_dir / ONNX_FILE).is_file()
    assert AutoTokenizer.from_pretrained(str(onnx_dir))(text)["input_ids"] == student_ids
    pipeline = json.loads((task_dir / "pipeline_summary.json").read_text())
    assert [r["model"] for r in pipeline["rows"]] == ["teacher", "student"]


@pytest.mark.slow
def test_teacher_rows_are_found_by_id_with_the_students_own_tokens(cross_run):
    """The distillation's batch hook, fed the student's batches (its tokenizer, shuffled), returns for every row
    the teacher's logits of the same text (the teacher run here on its own tokens), though the token rows differ."""
    from transformers import AutoModelForSequenceClassification

    from dist_peakd.cache import TeacherCache
    from dist_peakd.config import build_options
    from dist_peakd.data.rows import column_array
    from dist_peakd.engine.distributed import DistInfo
    from dist_peakd.stages.common import load_tokenizer, prepare_data, trainer_data
    from dist_peakd.stages.distill import DistillOptions, teacher_outputs

    names = {f.name for f in dataclasses.fields(DistillOptions)}
    opts = build_options(DistillOptions, **{k: v for k, v in cross_run.opts.items() if k in names})
    layout = opts.layout()
    cache = TeacherCache.open(layout.teacher_cache)
    student_tok, teacher_tok = load_tokenizer(str(cross_run.student)), load_tokenizer(str(layout.teacher))
    student_data, teacher_data = prepare_data(opts, student_tok), prepare_data(opts, teacher_tok)
    run_ = SimpleNamespace(data=student_data, cache=cache)
    add_teacher_outputs = teacher_outputs(run_)
    batches = trainer_data(student_data, student_tok, opts, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    teacher = AutoModelForSequenceClassification.from_pretrained(str(layout.teacher)).eval()
    teacher_rows = {int(i): r for i, r in zip(column_array(teacher_data.train, "idx"), teacher_data.train,
                                              strict=True)}
    differ = 0
    for indices in list(iter(batches.train_sampler))[:2]:
        batch = batches.collate([student_data.train[i] for i in indices])
        looked_up = add_teacher_outputs(batch)["teacher_logits"]
        for row, example_id in enumerate(batch["example_ids"].tolist()):
            ref = teacher_rows[example_id]
            student_row = student_data.train[indices[row]]
            differ += student_row["input_ids"] != ref["input_ids"]
            feed = {"input_ids": torch.tensor([ref["input_ids"]]),
                    "token_type_ids": torch.tensor([ref.get("token_type_ids") or [0] * len(ref["input_ids"])])}
            with torch.no_grad():
                expected = teacher(**feed).logits[0]
            assert torch.allclose(looked_up[row].float(), expected, atol=1e-4), example_id
    assert differ > 0  # the student's tokenizer splits these texts differently


def test_patient_kd_through_the_width_map_equals_a_hand_computation():
    from dist_peakd.distill import DistillLossConfig, distillation_loss
    from dist_peakd.models.cross_student import WidthMappedStudent
    from dist_peakd.models.sps import SPSSequenceClassifierOutput

    g = torch.Generator().manual_seed(0)
    student_cls = [torch.randn(2, 3, generator=g) for _ in range(3)]  # E = 3 layers, width 3
    teacher_cls = torch.randn(2, 4, 5, generator=g)  # 4 teacher layers, width 5
    logits = torch.randn(2, 2, generator=g)

    class Fixed(torch.nn.Module):
        def forward(self, **_):
            return SPSSequenceClassifierOutput(logits=logits, cls_states=tuple(student_cls))

    wrapped = WidthMappedStudent(Fixed(), 3, 5)
    with torch.no_grad():
        wrapped.cls_map.weight.copy_(torch.arange(15, dtype=torch.float32).reshape(5, 3) / 7 - 1)
        wrapped.cls_map.bias.copy_(torch.tensor([0.5, -0.25, 0.0, 1.0, -1.0]))
    out = wrapped()
    layer_map = [(1, 2), (2, 3)]
    loss = distillation_loss(out.logits, out.cls_states, logits, teacher_cls, torch.tensor([0, 1]), layer_map,
                             DistillLossConfig(alpha=0.0, beta=3.0))

    W, b = wrapped.cls_map.weight.detach(), wrapped.cls_map.bias.detach()
    total = 0.0
    for i in range(2):
        per_example = 0.0
        for j, t in layer_map:
            h_s = W @ student_cls[j - 1][i] + b
            h_t = teacher_cls[i, t - 1]
            d = h_t / h_t.norm() - h_s / h_s.norm()
            per_example += float((d * d).sum())
        total += per_example / (len(layer_map) * 5)
    assert float(loss.terms["pt"]) == pytest.approx(total, rel=1e-6)
    grads = torch.autograd.grad(loss.total, wrapped.cls_map.weight)
    assert grads[0].abs().sum() > 0  # the map gets gradients: it trains with the student


def test_export_drops_the_map_and_gives_the_students_logits(tiny_mpnet24, tmp_path):
    """The engine's export of the wrapped student (the trainer's path): a plain mpnet folder, no map weights,
    loaded by plain transformers with the student's own logits; equal widths get no map at all."""
    from transformers import AutoModelForSequenceClassification

    from dist_peakd.engine.distributed import DistInfo
    from dist_peakd.engine.export import export_pretrained
    from dist_peakd.models import build_student
    from dist_peakd.models.cross_student import WidthMappedStudent, with_width_map

    torch.manual_seed(0)
    student = build_student(tiny_mpnet24, k=2, variant="none", num_labels=2)
    assert with_width_map(student, 24, 24) is student
    wrapped = with_width_map(student, 24, 32)
    assert isinstance(wrapped, WidthMappedStudent)
    engine = SimpleNamespace(ds=SimpleNamespace(zero_optimization_stage=lambda: 0), module=wrapped,
                             dist=DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    export_pretrained(engine, tmp_path / "final", plain=True)
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "final")).eval()
    assert not any("cls_map" in k for k in reloaded.state_dict())
    ids = torch.randint(5, 60, (2, 9))
    feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        out = wrapped.eval()(**feed)
        assert (reloaded(**feed).logits - out.logits).abs().max().item() <= 1e-5
        assert {h.shape[-1] for h in out.cls_states} == {32}  # Patient-KD sees the teacher's width


def _manifest(folder: Path, num_labels: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format_version": 1, "splits": {}, "num_labels": num_labels,
                                                      "num_layers": 4, "hidden_size": 32,
                                                      "teacher_dir": "/somewhere/teacher"}))
    return folder


def test_label_set_mismatch_is_refused_before_any_work(tiny_bert, tiny_mpnet24, glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    cache = _manifest(tmp_path / "cache3", num_labels=3)
    before = sorted(p.name for p in cache.iterdir())
    code, err = cli("distill", slice_opts(out, tiny_bert, glue_dir, student_backbone=str(tiny_mpnet24),
                                          teacher_cache_dir=str(cache), use_ptp=False), capsys)
    assert code == 2, err[-2000:]
    line = [x for x in err.splitlines() if "student_backbone" in x]
    assert line and str(cache) in line[0] and str(tiny_mpnet24) in line[0] and "3 classes" in line[0], err[-1500:]
    assert "Traceback" not in err
    assert not (out / "mrpc").exists() or not any((out / "mrpc").iterdir())
    assert sorted(p.name for p in cache.iterdir()) == before


@pytest.mark.parametrize(("extra", "words"), [
    ({"k": 3}, "option k: 3 with --student_backbone"),
    ({"variant": "shuffle"}, "option variant: 'shuffle' with --student_backbone"),
])
def test_sps_options_are_refused_with_a_student_backbone(extra, words, tiny_bert, tiny_mpnet24, glue_dir, tmp_path,
                                                         capsys):
    out = tmp_path / "run"
    code, err = cli("distill", slice_opts(out, tiny_bert, glue_dir, student_backbone=str(tiny_mpnet24), **extra),
                    capsys)
    assert code == 2 and words in err and "Traceback" not in err, err[-1500:]
    assert not out.exists()


@pytest.mark.parametrize("command", ["sweep", "compress"])
def test_sweeps_and_compress_refuse_a_student_backbone(command, tiny_bert, tiny_mpnet24, glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = cli(command, slice_opts(out, tiny_bert, glue_dir, student_backbone=str(tiny_mpnet24)), capsys)
    assert code == 2 and "option student_backbone" in err and "sweeps and compress" in err, err[-1500:]
    assert not out.exists()


def test_a_student_tokenizer_past_its_embeddings_is_refused(tiny_bert, glue_dir, tmp_path, capsys):
    """A checkpoint whose tokenizer emits ids its embedding table does not have (a tokenizer of another model)."""
    from family_models import family_config, family_tokenizer
    from transformers import AutoModel

    tok = family_tokenizer("mpnet")
    config = family_config("mpnet", tok, 1, hidden=24)
    config.vocab_size = len(tok) - 10
    folder = tmp_path / "mismatched"
    AutoModel.from_config(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    out = tmp_path / "run"
    code, err = cli("distill", slice_opts(out, tiny_bert, glue_dir, student_backbone=str(folder), use_ptp=False),
                    capsys)
    assert code == 2 and f"the tokenizer in {folder} has {len(tok)} tokens" in err, err[-1500:]
    assert "Traceback" not in err
    assert not (out / "mrpc").exists() or not any((out / "mrpc").iterdir())


def test_a_student_backbone_that_is_no_model_is_refused(tiny_bert, glue_dir, tmp_path, capsys):
    empty = tmp_path / "nomodel"
    empty.mkdir()
    out = tmp_path / "run"
    code, err = cli("distill", slice_opts(out, tiny_bert, glue_dir, student_backbone=str(empty), use_ptp=False),
                    capsys)
    assert code == 2 and "option student_backbone" in err and str(empty) in err, err[-1500:]
    assert not (out / "mrpc").exists() or not any((out / "mrpc").iterdir())
