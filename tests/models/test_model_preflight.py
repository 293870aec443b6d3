"""Issue 27 items 3 and 4 (models): a model that cannot serve a command is refused before any work, in
one line, exit 2 (never a traceback or exit 1, nothing written): a backbone the SPS student cannot be
built from, a pickle-only backbone, a teacher of another task / without a head / with another tokenizer,
a student where a teacher belongs and the reverse, a missing PTP encoder, a file that is not an ONNX
graph; evaluate / predict refuse a folder without a trained head and a model of other classes, and say
plainly when the model was trained on another task with the same classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from reliab_helpers import args_of, run_cli, slice_opts

from dist_peakd.errors import ConfigError, ModelConfigError

#: tiny random checkpoints of non-BERT families (hidden 32, 2 layers); ``albert`` (no role supports it) is added
FAMILIES = ("roberta", "xlm-roberta", "electra", "deberta-v2", "modernbert", "distilbert", "mpnet")


def _family_model(model_type: str, vocab: int):
    import transformers as T

    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if model_type == "albert":  # a family no role supports
        return T.AlbertModel(T.AlbertConfig(vocab_size=vocab, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=64))
    if model_type == "distilbert":
        return T.DistilBertModel(T.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64))
    if model_type == "modernbert":
        ids = dict(pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102)
        return T.ModernBertModel(T.ModernBertConfig(**common, **ids))
    config, model = {"roberta": (T.RobertaConfig, T.RobertaModel), "xlm-roberta": (T.XLMRobertaConfig, T.XLMRobertaModel),
                     "electra": (T.ElectraConfig, T.ElectraModel), "deberta-v2": (T.DebertaV2Config, T.DebertaV2Model),
                     "mpnet": (T.MPNetConfig, T.MPNetModel)}[model_type]
    extra = {"max_position_embeddings": 514} if model_type in ("roberta", "xlm-roberta") else {}
    return model(config(**common, **extra))


def _classifier(folder: Path, tiny_bert: Path, task_name: str, tokenizer=None, record: bool = True) -> Path:
    """A fine-tuned-looking classifier of a GLUE task (random head, its class names, a dist-peakd record)."""
    from transformers import AutoTokenizer

    from dist_peakd.data import get_task
    from dist_peakd.integrity import write_export_manifest
    from dist_peakd.models import load_teacher

    task = get_task(task_name)
    torch.manual_seed(0)
    model = load_teacher(tiny_bert, task.num_labels)
    model.config.id2label = task.id2label()
    model.config.label2id = {n: i for i, n in task.id2label().items()}
    model.save_pretrained(str(folder))
    (tokenizer or AutoTokenizer.from_pretrained(str(tiny_bert))).save_pretrained(str(folder))
    if record:
        (folder / "dist_peakd.json").write_text(json.dumps({"stage": "teacher", "task": task_name, "max_length": 40}))
        write_export_manifest(folder)
    return folder


def _other_tokenizer(tiny_bert: Path, folder: Path):
    """The tiny BERT's tokenizer with two vocabulary entries swapped: another tokenizer."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(folder))
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    from transformers import AutoTokenizer, BertModel

    from dist_peakd.models import build_student

    root = tmp_path_factory.mktemp("zoo")
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    folders: dict[str, Path] = {}
    for name in (*FAMILIES, "albert"):
        _family_model(name, tok.vocab_size).save_pretrained(str(root / name))
        tok.save_pretrained(str(root / name))
        folders[name] = root / name
    pickle = root / "pickle"
    pickle.mkdir()
    shutil.copy(tiny_bert / "config.json", pickle / "config.json")
    torch.save(BertModel.from_pretrained(str(tiny_bert)).state_dict(), pickle / "pytorch_model.bin")
    tok.save_pretrained(str(pickle))
    folders["pickle"] = pickle
    for task in ("mrpc", "sst2", "rte"):
        folders[f"{task}_model"] = _classifier(root / f"{task}_model", tiny_bert, task)
    other = _other_tokenizer(tiny_bert, root / "other_tok")
    folders["other_tok_teacher"] = _classifier(root / "other_tok_teacher", tiny_bert, "mrpc", tokenizer=other)
    ptp = root / "ptp"
    build_student(tiny_bert, k=1, num_labels=4).save_pretrained(str(ptp))
    tok.save_pretrained(str(ptp))
    folders["ptp"] = ptp
    return folders


def _cli(stage: str, opts: dict, capsys) -> tuple[int, str, str]:
    return run_cli([stage, *args_of(opts)], capsys)


def _refused(capsys, stage: str, opts: dict, *expected: str, code: int = 2) -> str:
    """The command ends with ``code``, one line holding every ``expected`` text, no traceback, and leaves
    ``output_dir`` as it was (absent when it was)."""
    out_dir = Path(opts["output_dir"])
    before = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")) if out_dir.exists() else None
    got, _, err = _cli(stage, opts, capsys)
    line = err.strip().splitlines()[-1] if err.strip() else ""
    assert got == code, err
    assert all(text in line for text in expected), err
    assert "Traceback" not in err, err
    after = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")) if out_dir.exists() else None
    assert after == before, f"the refused run changed {out_dir}: {before} -> {after}"
    return line


# ------------------------------------------------------------------------------ the one place that knows
def test_the_supported_families_live_in_one_place(monkeypatch, zoo, tiny_bert):
    from dist_peakd.models import BERT_FAMILY, families

    assert BERT_FAMILY == families.TEACHER_TYPES and families.supported("backbone")[0] == "bert"
    assert families.family_refusal("backbone", "backbone", "x", "bert") is None
    assert families.family_refusal("backbone", "backbone", "x", "roberta") is None  # issue 23: its own SPS student
    assert "albert" in families.family_refusal("backbone", "backbone", "x", "albert")
    monkeypatch.setattr(families, "STUDENT_BACKBONE_TYPES", ("bert", "albert"))  # extending it is one edit
    assert families.family_refusal("backbone", "backbone", "x", "albert") is None
    assert families.has_trained_head(zoo["mrpc_model"]) is True and families.has_trained_head(tiny_bert) is False


def test_a_model_config_error_is_a_refusal_not_a_crash():
    from dist_peakd.guard import classify

    code, line = classify(ModelConfigError("bad k"))
    assert code == 2 and line == "error: bad k"


def test_load_teacher_can_require_a_trained_head_of_the_tasks_size(tiny_bert, zoo):
    from dist_peakd.models import load_teacher

    with pytest.raises(ModelConfigError, match="has no trained classification head"):
        load_teacher(tiny_bert, 2, require_head=True)
    with pytest.raises(ModelConfigError, match="another size than this task's 3"):
        load_teacher(zoo["mrpc_model"], 3, require_head=True)
    assert load_teacher(zoo["mrpc_model"], 2, require_head=True).config.num_labels == 2


# ------------------------------------------------------------------------------ item 4: backbones
def test_a_backbone_the_student_cannot_be_built_from_is_refused_before_finetune(tmp_path, capsys, zoo, glue_dir):
    opts = slice_opts(tmp_path / "run", zoo["albert"], glue_dir)
    _refused(capsys, "finetune-teacher", opts, f"option backbone: {zoo['albert']} has model_type 'albert'",
             "'roberta'", "'modernbert'", "use a checkpoint of one of those families")


@pytest.mark.parametrize("stage", ["cache-teacher", "ptp", "distill", "pipeline", "sweep"])
def test_every_training_command_refuses_an_unsupported_backbone_first(tmp_path, capsys, zoo, glue_dir, stage):
    extra = {"space": '{"temperature": [2, 5]}'} if stage == "sweep" else {}
    opts = slice_opts(tmp_path / "run", zoo["albert"], glue_dir, **extra)
    _refused(capsys, stage, opts, "has model_type 'albert'", "use a checkpoint of one of those families")


def test_a_pickle_only_backbone_is_refused_naming_the_file(tmp_path, capsys, zoo, glue_dir):
    opts = slice_opts(tmp_path / "run", zoo["pickle"], glue_dir)
    _refused(capsys, "finetune-teacher", opts, str(zoo["pickle"] / "pytorch_model.bin"), "safetensors",
             "arbitrary code")


def test_a_backbone_without_a_tokenizer_is_refused(tmp_path, capsys, tiny_bert, glue_dir):
    bare = tmp_path / "no_tok"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert / name, bare / name)
    _refused(capsys, "finetune-teacher", slice_opts(tmp_path / "run", bare, glue_dir),
             f"option backbone: {bare} has no usable tokenizer")


def test_a_k_beyond_the_backbone_is_refused_before_the_pipeline_trains(tmp_path, capsys, tiny_bert, glue_dir):
    _refused(capsys, "pipeline", slice_opts(tmp_path / "run", tiny_bert, glue_dir, k=9),
             "option k: student depth 9 exceeds the backbone's 4 layers")


# ------------------------------------------------------------------------------ item 4: teacher / student roles
def test_model_role_mixups_are_one_line_refusals(tmp_path, capsys, zoo, tiny_bert, glue_dir):
    base = slice_opts(tmp_path / "run", tiny_bert, glue_dir)
    _refused(capsys, "distill", dict(base, k=1, ptp_dir=str(zoo["mrpc_model"])),
             f"option ptp_dir: {zoo['mrpc_model']} has model_type 'bert', not a PTP encoder")
    _refused(capsys, "cache-teacher", dict(base, teacher_dir=str(zoo["ptp"])),
             f"option teacher_dir: {zoo['ptp']} has model_type 'sps-bert': an SPS student")
    _refused(capsys, "distill", dict(base, k=1), "option ptp_dir: no PTP encoder at", "--use_ptp=False")
    _refused(capsys, "cache-teacher", dict(base, teacher_dir=str(tiny_bert)),
             f"option teacher_dir: {tiny_bert} has no trained classification head")
    # deberta-v2 is a teacher family since issue 23: its pretrained backbone is refused for its missing head
    _refused(capsys, "cache-teacher", dict(base, teacher_dir=str(zoo["deberta-v2"])),
             f"option teacher_dir: {zoo['deberta-v2']} has no trained classification head")
    _refused(capsys, "cache-teacher", base, "option teacher_dir: teacher folder", "not found")
    _refused(capsys, "pipeline", dict(base, k=1, ptp_dir=str(zoo["sst2_model"])),  # before the teacher trains
             f"option ptp_dir: {zoo['sst2_model']} has model_type 'bert', not a PTP encoder")


@pytest.mark.parametrize("stage", ["cache-teacher", "pipeline"])
def test_a_teacher_of_another_task_is_refused_naming_both_tasks(tmp_path, capsys, zoo, tiny_bert, glue_dir, stage):
    opts = slice_opts(tmp_path / "run", tiny_bert, glue_dir, teacher_dir=str(zoo["sst2_model"]))
    _refused(capsys, stage, opts, f"{zoo['sst2_model']} was trained on task 'sst2'", "this run is 'mrpc'")


def test_a_teacher_with_another_tokenizer_names_both_folders(tmp_path, capsys, zoo, tiny_bert, glue_dir):
    teacher = zoo["other_tok_teacher"]
    for stage, extra in (("cache-teacher", {}), ("distill", {"k": 1, "use_ptp": False})):
        opts = slice_opts(tmp_path / "run", tiny_bert, glue_dir, teacher_dir=str(teacher), **extra)
        line = _refused(capsys, stage, opts, "two different tokenizers", f"the teacher {teacher}",
                        f"the backbone {tiny_bert}")
        assert "--rebuild" not in line


def test_a_cache_of_another_tokenizer_is_not_sent_to_rebuild(tmp_path, capsys, tiny_bert, glue_dir):
    """No teacher folder, a cache built with another tokenizer: the real cause, not 'rerun with --rebuild'."""
    cache = tmp_path / "run" / "mrpc" / "teacher_cache"
    cache.mkdir(parents=True)
    (cache / "manifest.json").write_text(json.dumps({"tokenizer_fingerprint": "0" * 64,
                                                     "teacher_dir": "/elsewhere/teacher"}))
    opts = slice_opts(tmp_path / "run", tiny_bert, glue_dir, k=1, use_ptp=False)
    line = _refused(capsys, "distill", opts, "two different tokenizers", "/elsewhere/teacher", str(tiny_bert))
    assert "--rebuild" not in line


# ------------------------------------------------------------------------------ item 3: evaluate / predict
def _model_opts(tmp_path: Path, glue_dir: Path, model_dir: Path, **kw) -> dict:
    return dict(output_dir=str(tmp_path / "runs"), glue_dir=str(glue_dir), cache_dir=str(tmp_path / "tok"),
                model_dir=str(model_dir), max_eval_examples=8, **kw)


def test_evaluate_predict_export_refuse_a_folder_without_a_trained_head(tmp_path, capsys, tiny_bert, minilm_path,
                                                                        glue_dir):
    for folder in (tiny_bert, minilm_path):
        out = tmp_path / "eval.json"
        _refused(capsys, "evaluate", _model_opts(tmp_path, glue_dir, folder, task="mrpc", out=str(out)),
                 f"model_dir {folder} has no trained classification head")
        assert not out.exists()
    preds = tmp_path / "preds" / "mrpc.tsv"
    _refused(capsys, "predict", _model_opts(tmp_path, glue_dir, minilm_path, task="mrpc", out=str(preds)),
             f"model_dir {minilm_path} has no trained classification head")
    assert not preds.parent.exists()
    _refused(capsys, "export", dict(model_dir=str(minilm_path), task="mrpc", glue_dir=str(glue_dir),
                                    output_dir=str(tmp_path / "runs"), out=str(tmp_path / "ship")),
             "has no trained classification head", code=4)
    assert not (tmp_path / "ship").exists()


def test_evaluate_refuses_a_model_of_other_classes_naming_both_tasks(tmp_path, capsys, zoo, glue_dir):
    out = tmp_path / "eval.json"
    for stage, extra in (("evaluate", {"out": str(out)}), ("predict", {"out": str(tmp_path / "p.tsv"), "split": "dev"})):
        _refused(capsys, stage, _model_opts(tmp_path, glue_dir, zoo["sst2_model"], task="mrpc", **extra),
                 f"option task: {zoo['sst2_model']} was trained on sst2 (classes negative, positive), not on mrpc "
                 "(classes not_equivalent, equivalent)")
    assert not out.exists() and not (tmp_path / "p.tsv").exists() and not (tmp_path / "tok").exists()


def test_evaluate_says_plainly_when_the_model_is_of_another_task_with_the_same_classes(tmp_path, capsys, zoo,
                                                                                       glue_dir):
    out = tmp_path / "eval.json"
    code, stdout, err = _cli("evaluate", _model_opts(tmp_path, glue_dir, zoo["rte_model"], task="qnli", out=str(out)),
                             capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["task"] == "qnli" and result["trained_on"] == "rte"
    assert any("was trained on rte, not on qnli" in w for w in result["warnings"]), result
    assert "was trained on rte, not on qnli (the same classes: entailment, not_entailment)" in stdout + err
    code, stdout, err = _cli("evaluate", _model_opts(tmp_path, glue_dir, zoo["rte_model"], out=str(out)), capsys)
    assert code == 0 and "trained_on" not in json.loads(out.read_text()) and "trained on" not in stdout + err


# ------------------------------------------------------------------------------ item 4: --onnx_file
def test_a_file_that_is_not_an_onnx_graph_is_refused(tmp_path, capsys, zoo, glue_dir):
    folder = tmp_path / "onnx"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(zoo["mrpc_model"] / name, folder / name)
    (folder / "model.onnx").write_bytes(b"not a protobuf at all")
    (folder / "notes.onnx").write_text("hello")
    base = _model_opts(tmp_path, glue_dir, folder, task="mrpc")
    _refused(capsys, "evaluate", dict(base, onnx_file="config.json"),
             f"option onnx_file: {folder / 'config.json'} is not an ONNX graph (a .onnx file)")
    _refused(capsys, "predict", dict(base, onnx_file="notes.onnx", out=str(tmp_path / "p.tsv")),
             f"option onnx_file: {folder / 'notes.onnx'} is not a loadable ONNX graph")
    _refused(capsys, "evaluate", base, f"corrupted artifact: {folder / 'model.onnx'}: not a loadable ONNX graph",
             code=4)
    assert not (tmp_path / "p.tsv").exists()


def test_the_preflight_accepts_a_fitting_ptp_encoder_and_refuses_another_shape(tiny_bert, zoo, tmp_path, glue_dir):
    """The stages call it first; an API caller gets the same ConfigError."""
    from dist_peakd.config import build_options
    from dist_peakd.stages.distill import DistillOptions
    from dist_peakd.stages.preflight import check_models

    def opts(k: int):
        return build_options(DistillOptions, **slice_opts(tmp_path / "run", tiny_bert, glue_dir, k=k,
                                                          ptp_dir=str(zoo["ptp"])))

    check_models(opts(1), "distill")  # the k=1 shuffle encoder fits a k=1 shuffle run
    with pytest.raises(ConfigError, match="has k=1, variant=shuffle; this run asks k=2, variant=shuffle"):
        check_models(opts(2), "distill")
    assert not (tmp_path / "run").exists()


def test_a_ptp_encoder_of_another_family_than_the_backbone_is_refused(tiny_bert, zoo, tmp_path, glue_dir):
    """Issue 23: a PTP encoder is the SPS student of its backbone's family; a RoBERTa one does not continue a run
    on a BERT backbone, nor a BERT one a run on a RoBERTa backbone."""
    from dist_peakd.config import build_options
    from dist_peakd.models import build_student
    from dist_peakd.stages.distill import DistillOptions
    from dist_peakd.stages.preflight import check_models

    roberta_ptp = tmp_path / "roberta_ptp"
    build_student(zoo["roberta"], k=1, num_labels=4).save_pretrained(str(roberta_ptp))
    assert json.loads((roberta_ptp / "config.json").read_text())["model_type"] == "sps-family"
    for backbone, ptp, message in ((tiny_bert, roberta_ptp, "is a roberta SPS student; this run's backbone"),
                                   (zoo["roberta"], zoo["ptp"], "is a bert SPS student; this run's backbone")):
        options = build_options(DistillOptions, **slice_opts(tmp_path / "run", backbone, glue_dir, k=1,
                                                             ptp_dir=str(ptp)))
        with pytest.raises(ConfigError, match=message):
            check_models(options, "distill")
    check_models(build_options(DistillOptions, **slice_opts(tmp_path / "run", zoo["roberta"], glue_dir, k=1,
                                                            ptp_dir=str(roberta_ptp))), "distill")
    assert not (tmp_path / "run").exists()


def test_zero3_is_refused_for_a_non_bert_sps_student_only(tiny_bert, zoo, tmp_path, glue_dir):
    from dist_peakd.config import build_options
    from dist_peakd.stages.preflight import _check_zero3
    from dist_peakd.stages.ptp import PTPOptions

    def options(backbone, **kw):
        return build_options(PTPOptions, **slice_opts(tmp_path / "run", backbone, glue_dir, k=1, **kw))

    with pytest.raises(ConfigError, match="option zero_stage: the SPS student of the roberta backbone"):
        _check_zero3(options(zoo["roberta"], zero_stage=3), str(zoo["roberta"]))
    _check_zero3(options(zoo["roberta"], zero_stage=2), str(zoo["roberta"]))  # stages 0-2 are fine
    _check_zero3(options(tiny_bert, zero_stage=3), str(tiny_bert))  # the BERT student has no twins
    assert not (tmp_path / "run").exists()


def test_a_modernbert_layer_map_not_starting_at_layer_0_is_refused_before_work(tmp_path, capsys, zoo, glue_dir):
    opts = slice_opts(tmp_path / "run", zoo["modernbert"], glue_dir, student="plain", depth=1, layer_map="1")
    _refused(capsys, "ptp", opts, "option layer_map: 1 copies backbone layers [1]", "modernbert", "start the layer map at 0")
