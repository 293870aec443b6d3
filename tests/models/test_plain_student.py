"""``--student plain``: a plain d-layer student whose layers come from the backbone per ``--layer_map``
(issue 24 item 1): its forward is the family's d-layer model on the mapped weights, its options are refused
in one line before anything is written, and a distillation of it exports standard ``bert`` folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reliab_helpers import cli, copy_run, slice_opts, teacher_run  # noqa: F401  (fixture)

from dist_peakd.config import build_options
from dist_peakd.errors import ConfigError
from dist_peakd.stages import distill, ptp
from dist_peakd.stages.student_kind import layer_indices, map_tag


# ----------------------------------------------------------------------------------------- the layer map
@pytest.mark.parametrize("layer_map, depth, layers, expect", [
    ("bottom", 2, 4, [0, 1]), ("bottom", 4, 4, [0, 1, 2, 3]),
    ("alternate", 3, 6, [0, 2, 4]), ("alternate", 6, 12, [0, 2, 4, 6, 8, 10]), ("alternate", 2, 4, [0, 2]),
    ("alternate", 2, 6, [0, 3]), ("alternate", 4, 4, [0, 1, 2, 3]), ("alternate", 1, 6, [0]),
    ("1,3", 2, 4, [1, 3]), ("0, 5", 2, 6, [0, 5]),
])
def test_layer_map_rules(layer_map, depth, layers, expect):
    assert layer_indices(layer_map, depth, layers) == expect


@pytest.mark.parametrize("layer_map, depth, layers, message", [
    ("0,4", 2, 4, "layer 4 is outside 0..3"), ("0,1,2", 2, 4, "names 3 layer"), ("2,1", 2, 4, "strictly increasing"),
    ("1,1", 2, 4, "strictly increasing"), ("top", 2, 4, "is not one of"), ("bottom", 5, 4, "outside 1..4"),
])
def test_layer_map_refusals(layer_map, depth, layers, message):
    with pytest.raises(ConfigError, match=message):
        layer_indices(layer_map, depth, layers)


def test_folder_tags():
    assert (map_tag("bottom"), map_tag("alternate"), map_tag("0,2,5")) == ("bot", "alt", "m0-2-5")


# ----------------------------------------------------------------------------------------- the forward
def _reference(backbone: Path, layers: list[int], student) -> torch.nn.Module:
    """BertForSequenceClassification of len(layers) layers: embeddings, pooler and the mapped layers of the
    backbone, the student's (fresh) head."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig.from_pretrained(str(backbone), num_hidden_layers=len(layers), num_labels=2)
    config._attn_implementation = "eager"
    ref = BertForSequenceClassification(config).eval()
    base = BertModel.from_pretrained(str(backbone), add_pooling_layer=True, dtype=torch.float32)
    ref.bert.embeddings.load_state_dict(base.embeddings.state_dict())
    ref.bert.pooler.load_state_dict(base.pooler.state_dict())
    for j, i in enumerate(layers):
        ref.bert.encoder.layer[j].load_state_dict(base.encoder.layer[i].state_dict())
    ref.classifier.load_state_dict(student.classifier.state_dict())
    return ref


@pytest.mark.parametrize("layer_map, depth, expect", [("bottom", 2, [0, 1]), ("alternate", 2, [0, 2]),
                                                      ("1,3", 2, [1, 3]), ("0,2,3", 3, [0, 2, 3])])
def test_plain_student_forward_is_the_bert_of_the_mapped_layers(tiny_bert, layer_map, depth, expect):
    from dist_peakd.models import build_student

    layers = layer_indices(layer_map, depth, 4)
    assert layers == expect
    torch.manual_seed(0)
    student = build_student(tiny_bert, k=depth, variant="none", layers=layers, attn_implementation="eager").eval()
    ref = _reference(tiny_bert, layers, student)
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    with torch.no_grad():
        out = student(input_ids=ids, attention_mask=mask, token_type_ids=types)
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    assert (out.logits - want.logits).abs().max().item() <= 1e-6
    assert len(out.cls_states) == depth
    for got, hidden in zip(out.cls_states, want.hidden_states[1:], strict=True):
        assert (got - hidden[:, 0]).abs().max().item() <= 1e-6
    # the bottom map is the SPS student's own copy (variant none): the default path is unchanged
    if layer_map == "bottom":
        torch.manual_seed(0)
        default = build_student(tiny_bert, k=depth, variant="none", attn_implementation="eager")
        assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), student.state_dict().values(),
                                                     strict=True))


def test_build_student_refuses_a_bad_layer_list(tiny_bert):
    from dist_peakd.models import ModelConfigError, build_student

    for layers in ([0], [1, 0], [0, 4]):
        with pytest.raises(ModelConfigError, match="strictly increasing indices in 0..3"):
            build_student(tiny_bert, k=2, variant="none", layers=layers)


# ----------------------------------------------------------------------------------------- the options
def test_default_student_is_sps_with_todays_names():
    opts = build_options(distill.DistillOptions, k=2)
    assert (opts.student, opts.k, opts.variant, opts.depth, opts.layer_map) == ("sps", 2, "shuffle", None, "bottom")
    assert opts.stage_name() == "distill-k2-shuffle-ptp-a0.7-T10-b100-s0"
    assert build_options(distill.DistillOptions).k == "auto"
    assert build_options(ptp.PTPOptions, k=3, variant="none").stage_name() == "ptp-k3-none"


def test_plain_stage_names():
    opts = build_options(distill.DistillOptions, student="plain", depth=2, layer_map="alternate", use_ptp=False)
    assert opts.stage_name() == "distill-plain-d2-alt-a0.7-T10-b100-s0"
    opts = build_options(ptp.PTPOptions, student="plain", depth=3, layer_map="0,2,5")
    assert opts.stage_name() == "ptp-plain-d3-m0-2-5"


@pytest.mark.parametrize("extra, message", [
    ({"student": "plain"}, "option depth: --student plain needs --depth"),
    ({"student": "plain", "depth": 0}, "option depth: student depth must be 'auto' or an integer >= 1, got 0"),
    ({"student": "plain", "depth": 9}, "option depth: 9 is outside 1..4"),
    ({"student": "plain", "depth": 2, "k": 3}, "option k: 3 is the SPS student's depth"),
    ({"student": "plain", "depth": 2, "variant": "shuffle"}, "option variant: 'shuffle' is an SPS schedule"),
    ({"student": "plain", "depth": 2, "variant": "share"}, "option variant: 'share' is an SPS schedule"),
    ({"student": "plain", "depth": 2, "layer_map": "0,1,2"}, "option layer_map: '0,1,2' names 3 layer"),
    ({"student": "plain", "depth": 2, "layer_map": "0,4"}, "option layer_map: layer 4 is outside 0..3"),
    ({"student": "plain", "depth": 2, "layer_map": "2,1"}, "strictly increasing"),
    ({"depth": 2}, "option depth: 2 is the plain student's depth"),
    ({"layer_map": "alternate"}, "option layer_map: 'alternate' applies to --student plain only"),
    ({"student": "tiny"}, "option student: 'tiny' is not one of"),
])
def test_invalid_combinations_are_refused_in_one_line_before_anything_is_written(tmp_path, tiny_bert, glue_dir,
                                                                                  capsys, extra, message):
    out = tmp_path / "run"
    opts = slice_opts(out, tiny_bert, glue_dir, use_ptp=False, **extra)
    for stage in ("distill", "ptp", "pipeline"):
        if stage == "ptp":
            opts = {k: v for k, v in opts.items() if k != "use_ptp"}
        code, err = cli(stage, opts, capsys)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code == 2, (stage, err)
        assert len(lines) == 1 and message in lines[0], (stage, err)
        assert "Traceback" not in err
        assert not out.exists() and not (tmp_path / "tok").exists(), stage


def test_sweep_refuses_a_plain_student(tmp_path, tiny_bert, glue_dir, capsys):
    out = tmp_path / "run"
    code, err = cli("sweep", slice_opts(out, tiny_bert, glue_dir, student="plain", depth=2), capsys)
    assert code == 2 and "option student: 'plain': sweeps train SPS students only" in err
    assert not out.exists()


# ----------------------------------------------------------------------------------------- end to end
def test_plain_distillation_end_to_end(teacher_run, tmp_path, capsys):  # noqa: F811
    from transformers import AutoConfig, AutoModelForSequenceClassification

    out, opts = copy_run(teacher_run, tmp_path)
    plain = dict(opts, student="plain", depth=2, layer_map="alternate")
    code, _ = cli("ptp", plain, capsys)
    assert code == 0
    ptp_dir = out / "mrpc" / "ptp-plain-d2-alt"
    ptp_summary = json.loads((ptp_dir / "summary.json").read_text())
    assert ptp_summary["student"] == {"student": "plain", "depth": 2, "layer_map": "alternate",
                                      "backbone_layers": [0, 2]}
    code, _ = cli("distill", plain, capsys)
    assert code == 0
    stage = out / "mrpc" / "distill-plain-d2-alt-ptp-a0.7-T10-b100-s3"
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["student"]["backbone_layers"] == [0, 2]
    assert (summary["model_stats"]["num_parameter_layers"], summary["model_stats"]["num_effective_layers"]) == (2, 2)
    assert [list(p) for p in summary["layer_map"]] == [[1, 2]]  # student layer 1 <-> teacher layer 1*4/2
    record = json.loads((stage / "final" / "dist_peakd.json").read_text())
    assert record["options"]["variant"] == "none" and summary["k"] == 2
    assert record["card"]["method"]["backbone_layers"] == [0, 2]
    for which in ("best", "final"):
        folder = stage / which
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "bert" and config["num_hidden_layers"] == 2
        assert "auto_map" not in config and not (folder / "modeling_sps_bert.py").exists()
        assert "trust_remote_code" not in (folder / "README.md").read_text()
        model = AutoModelForSequenceClassification.from_pretrained(str(folder))
        assert type(model).__name__ == "BertForSequenceClassification"
        assert AutoConfig.from_pretrained(str(folder)).id2label == {0: "not_equivalent", 1: "equivalent"}
    # `dist-peakd export` of it: an hf (compact) export is the same standard folder, loading without custom code
    exported = tmp_path / "exported"
    code, err = cli("export", {"model_dir": str(stage / "final"), "out": str(exported), "format": "hf"}, capsys)
    assert code == 0, err
    assert json.loads((exported / "config.json").read_text())["model_type"] == "bert"
    assert "trust_remote_code" not in (exported / "README.md").read_text()
    assert type(AutoModelForSequenceClassification.from_pretrained(str(exported))).__name__ == \
        "BertForSequenceClassification"
    # no ptp encoder of another layer map is taken for this one
    other = dict(plain, layer_map="bottom", ptp_dir=str(ptp_dir / "best"))
    code, err = cli("distill", other, capsys)
    assert code == 2 and "built from backbone layers [0, 2]" in err and "[0, 1]" in err


def test_pipeline_with_a_plain_student_of_auto_depth(teacher_run, tmp_path, capsys):  # noqa: F811
    out, opts = copy_run(teacher_run, tmp_path)
    values = {k: v for k, v in opts.items() if k not in ("epochs", "lr")}
    values.update(student="plain", depth="auto", layer_map="1,3", teacher_epochs=1, teacher_lr=1e-3, ptp_epochs=1,
                  ptp_lr=1e-3, epochs=1, lr=1e-3, latency_repeats=1)
    code, _ = cli("pipeline", values, capsys)
    assert code == 0
    summary = json.loads((out / "mrpc" / "pipeline_summary.json").read_text())
    assert any("teacher: reused" in line for line in summary["stages"])  # the teacher of the same options
    student = summary["rows"][1]
    assert (student["num_parameter_layers"], student["num_effective_layers"]) == (2, 2)  # auto: ceil(4/2)
    assert summary["student_dir"].endswith("distill-plain-d2-m1-3-ptp-a0.7-T10-b100-s3/final")
    assert (out / "mrpc" / "ptp-plain-d2-m1-3" / "best").is_dir()
    md = (out / "mrpc" / "pipeline_summary.md").read_text()
    assert "pipeline: mrpc (plain d=2 (1,3 layers) (auto: 4-layer teacher), PTP on" in md
    assert json.loads((Path(summary["student_dir"]) / "config.json").read_text())["model_type"] == "bert"
