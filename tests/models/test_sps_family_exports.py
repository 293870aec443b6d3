"""The product's SPS student of every non-BERT family (models/modeling_sps_family.py) and its exports.

Tiny random models of every family (the configs of ``test_sps_families.py``): (a) ``none`` equals the
family's own k-layer model and ``shuffle`` an unrolled model this test builds itself (Q/K swapped by
copying data); (b) the compact export reloads with ``trust_remote_code=True`` in a fresh process where
``dist_peakd`` cannot be imported (``sys.modules['dist_peakd'] = None``) and gives the same logits;
(c) the plain export, loaded in that same process, is a standard folder of the family with ``E`` layers
and no code files, equal to the student; (d) the ONNX export round-trips in onnxruntime, fused where
onnxruntime's optimizer knows the family, a plain graph otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_sps_families import CONFIGS, assert_close, bottom_k, inputs, reference_unrolled, run, source_model

from dist_peakd.export import export_compact, export_plain
from dist_peakd.models import SPSFamilyForSequenceClassification, load_student
from dist_peakd.models.sps_family_student import student_from_classifier

#: every family but BERT (whose student stays ``sps-bert``: tests/models/test_sps.py, test_export_hf.py)
NAMES = [name for name in CONFIGS if name != "bert"]
#: families whose ONNX graph onnxruntime's transformer optimizer fuses (as ``bert``)
FUSED = {"roberta", "xlm-roberta", "camembert", "electra", "distilbert"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def student(name: str, variant: str = "shuffle", k: int = 2) -> SPSFamilyForSequenceClassification:
    return student_from_classifier(source_model(name), list(range(k)), variant).eval()


@pytest.mark.parametrize("name", NAMES)
def test_none_equals_the_family_k_layer_model_and_shuffle_the_swapped_unrolled_one(name: str) -> None:
    plain = student(name, "none", 3)
    assert plain.schedule == [(0, False), (1, False), (2, False)]
    assert plain.config.model_type == "sps-family" and plain.config.base_model_type == CONFIGS[name][0]().model_type
    sps = student(name, "shuffle", 2)
    assert sps.num_effective_layers == 4 and sps.config.num_hidden_layers == 2
    assert sum(p.numel() for p in sps.parameters()) == sum(p.numel() for p in bottom_k(source_model(name), 2).parameters())
    with torch.no_grad():
        assert_close(plain(**inputs(name)), *run(bottom_k(source_model(name), 3), name), 1e-6)
        logits, cls = run(reference_unrolled(source_model(name), 2, sps.schedule), name)
        assert_close(sps(**inputs(name)), logits, cls, 1e-6)
        shared = run(reference_unrolled(source_model(name), 2, [(i, False) for i, _ in sps.schedule]), name)[1]
    assert (shared[-1] - cls[-1]).abs().max().item() > 1e-3  # the swap shows: the comparison can fail


_FRESH = textwrap.dedent("""
    import json, sys
    sys.modules["dist_peakd"] = None  # dist-peakd cannot be imported here
    import torch
    from transformers import AutoModelForSequenceClassification
    torch.set_num_threads(1)
    out = {}
    for name, folders in json.loads(sys.argv[1]).items():
        feed = {k: torch.tensor(v) for k, v in folders["inputs"].items()}
        row = {}
        for kind in ("compact", "plain"):
            model = AutoModelForSequenceClassification.from_pretrained(folders[kind], trust_remote_code=kind == "compact")
            with torch.no_grad():
                row[kind] = model.eval()(**feed).logits.tolist()
            row[kind + "_class"] = type(model).__module__ + "." + type(model).__name__
            row[kind + "_layers"] = model.config.num_hidden_layers
        out[name] = row
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory) -> dict:
    """Every family's compact and plain exports, loaded in one process without dist_peakd."""
    root = tmp_path_factory.mktemp("family_exports")
    job = {}
    for name in NAMES:
        model = student(name)
        export_compact(model, root / name / "compact")
        export_plain(model, root / name / "plain")
        job[name] = {"compact": str(root / name / "compact"), "plain": str(root / name / "plain"),
                     "inputs": {k: v.tolist() for k, v in inputs(name).items()}}
    done = subprocess.run([sys.executable, "-c", _FRESH, json.dumps(job)], capture_output=True, text=True,
                          cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "results": json.loads(done.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("name", NAMES)
def test_compact_export_reloads_without_dist_peakd_with_the_same_logits(name: str, fresh_process) -> None:
    folder = fresh_process["root"] / name / "compact"
    assert {"configuration_sps_bert.py", "configuration_sps_family.py", "modeling_sps_family.py"} <= \
        {p.name for p in folder.glob("*.py")}
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model_type"] == "sps-family" and saved["sps_schedule"] == [[0, False], [1, False], [0, True], [1, True]]
    row = fresh_process["results"][name]
    assert row["compact_class"].startswith("transformers_modules.")  # the folder's code, not the package's
    assert row["compact_class"].endswith("SPSFamilyForSequenceClassification") and row["compact_layers"] == 2
    with torch.no_grad():
        mine = student(name)(**inputs(name)).logits
    assert (torch.tensor(row["compact"]) - mine).abs().max().item() <= 1e-6
    reloaded = load_student(folder, require_head=True).eval()  # and in dist-peakd, with the package's code
    assert type(reloaded) is SPSFamilyForSequenceClassification
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs(name)).logits, mine)


@pytest.mark.parametrize("name", NAMES)
def test_plain_export_is_a_standard_folder_of_the_family_equal_to_the_student(name: str, fresh_process) -> None:
    folder = fresh_process["root"] / name / "plain"
    family = CONFIGS[name][0]().model_type
    saved = json.loads((folder / "config.json").read_text())
    assert not list(folder.glob("*.py")) and "auto_map" not in saved
    assert saved["model_type"] == family and saved["num_hidden_layers" if family != "distilbert" else "n_layers"] == 4
    row = fresh_process["results"][name]
    assert row["plain_class"].startswith("transformers.models.") and row["plain_layers"] == 4
    with torch.no_grad():
        mine = student(name)(**inputs(name)).logits
    assert (torch.tensor(row["plain"]) - mine).abs().max().item() <= 1e-5


#: ONNX exports take seconds each: three in the fast tier (fused; fused QKV and plain; no token types), the rest slow
ONNX_FAST = ("roberta", "modernbert", "distilbert")


@pytest.mark.parametrize("name", [n if n in ONNX_FAST else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_onnx_export_round_trips_fused_or_plain_as_the_card_says(name: str, tmp_path) -> None:
    import onnx

    from dist_peakd.export.card import onnx_fusion_note
    from dist_peakd.export.onnx import ONNX_FILE, export_onnx, onnx_logits

    model = student(name)
    feed = inputs(name)
    result = export_onnx(model, tmp_path / "onnx", verify_batches=[feed])
    assert result["max_abs_diff"] <= 1e-4
    graph = tmp_path / "onnx" / ONNX_FILE
    with torch.no_grad():
        want = model(**feed).logits.numpy()
    assert abs(onnx_logits(graph, {k: v.numpy() for k, v in feed.items()}) - want).max() <= 1e-4
    domains = {node.domain for node in onnx.load(str(graph)).graph.node}
    family = CONFIGS[name][0]().model_type
    assert ("com.microsoft" in domains) == (family in FUSED)
    assert ("plain graph" in onnx_fusion_note(family)) == (family not in FUSED)
    saved = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert saved["model_type"] == family  # config.json describes the graph: the family's E layers


def test_a_ptp_encoder_reloads_with_a_new_task_head(tmp_path) -> None:
    model = student("roberta")
    export_compact(model, tmp_path / "ptp")
    torch.manual_seed(3)
    task = load_student(tmp_path / "ptp", num_labels=3)
    assert task.config.num_labels == 3 and task.model.classifier.out_proj.out_features == 3
    kept = {n: t for n, t in model.state_dict().items() if ".classifier." not in n}
    assert all(torch.equal(task.state_dict()[n], t) for n, t in kept.items())


def test_the_student_backbone_families_are_the_family_table() -> None:
    from dist_peakd.models import families
    from dist_peakd.models.configuration_sps_family import SUPPORTED_FAMILIES

    assert set(families.supported("backbone")) == set(SUPPORTED_FAMILIES)
    assert families.supported("student") == ("sps-bert", "sps-family")


def test_a_saved_family_student_path(tmp_path: Path) -> None:
    """A folder of the family's own classifier is not a saved student: refused naming both student types."""
    from dist_peakd.models import ModelConfigError

    source_model("roberta").save_pretrained(tmp_path)
    with pytest.raises(ModelConfigError, match="not a saved SPS student \\('sps-bert' or 'sps-family'\\)"):
        load_student(tmp_path)


@pytest.mark.parametrize("name", ["roberta", "deberta-v2"])
def test_build_student_from_a_family_checkpoint_copies_the_mapped_layers(name: str, tmp_path) -> None:
    """``build_student`` on a non-BERT checkpoint (the stages' entry): the plain student of layers 1 and 3 is
    the family's 2-layer model of those layers (its [CLS] states; the head is new)."""
    from dist_peakd.models import build_student

    source_model(name).save_pretrained(tmp_path)
    torch.manual_seed(0)
    built = build_student(tmp_path, k=2, variant="none", num_labels=3, layers=[1, 3]).eval()
    assert type(built) is SPSFamilyForSequenceClassification and built.config.num_labels == 3
    reference = student_from_classifier(source_model(name), [1, 3], "none").eval()
    with torch.no_grad():
        mine, theirs = built(**inputs(name)), reference(**inputs(name))
    for a, b in zip(mine.cls_states, theirs.cls_states, strict=True):
        assert (a - b).abs().max().item() <= 1e-6
    sps = build_student(tmp_path, k=3, variant="shuffle", num_labels=2)
    assert sps.num_effective_layers == 6 and sps.config.num_hidden_layers == 3


def test_a_modernbert_layer_map_must_start_at_its_bottom_layer(tmp_path) -> None:
    """ModernBERT's layer 0 has no input norm (the embeddings end with one), every other layer has one: a
    student whose bottom layer is another backbone layer cannot be saved as a ModernBERT, so it is refused."""
    from dist_peakd.models import ModelConfigError, build_student

    source_model("modernbert").save_pretrained(tmp_path)
    with pytest.raises(ModelConfigError, match=r"layers \[1, 3\]: a modernbert student's bottom layer must be"):
        build_student(tmp_path, k=2, variant="none", layers=[1, 3])


@pytest.mark.parametrize("name", ["roberta", "distilbert", "modernbert"])
def test_size_and_flops_of_the_student_and_its_plain_export(name: str) -> None:
    """SPS saves parameters, not compute: the student's encoder holds k layers of weights, its unrolled export
    E, at the same FLOPs (DistilBERT names its sizes dim/hidden_dim, ModernBERT keeps its layers at model.layers)."""
    from dist_peakd.export.hf import unroll_student
    from dist_peakd.models import model_stats

    sps = student(name)
    mine, plain, source = model_stats(sps), model_stats(unroll_student(sps)), model_stats(source_model(name))
    assert (mine["num_parameter_layers"], mine["num_effective_layers"]) == (2, 4)
    assert plain["num_parameter_layers"] == plain["num_effective_layers"] == 4
    # ModernBERT: the bottom layer's twin runs higher up with the input norm the bottom layer lacks (32 weights)
    extra = 32 if name == "modernbert" else 0
    assert 0 < mine["encoder_parameters"] * 2 + extra == plain["encoder_parameters"] == source["encoder_parameters"]
    assert mine["flops_per_token"] == plain["flops_per_token"] == source["flops_per_token"] > 0
