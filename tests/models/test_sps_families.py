"""The family-generic SPS student (models/sps_generic.py) on tiny random models of every family.

For each family: (a) ``none`` equals the family's own k-layer model; (b) ``share``/``shuffle`` equal an
unrolled model the test builds itself (deep copies of the layers, Q/K swapped by copying data, from
this file's own table, not the package's); (c) no parameter is added and a shared tensor's gradient
is the sum over every place it runs; (d) the plain export is a standard folder of the family that
``AutoModelForSequenceClassification`` reloads without custom code and that equals the student.
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
import transformers as T
from torch import nn
from transformers import AutoModelForSequenceClassification

from dist_peakd.models import ModelConfigError, SPSBertConfig, SPSBertForSequenceClassification
from dist_peakd.models.sps_families import SUPPORTED_FAMILIES
from dist_peakd.models.sps_generic import (
    build_family_student,
    compact_state_dict,
    sps_from_classifier,
    unrolled_classifier,
)

VOCAB, LAYERS = 60, 4
_SIZES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
              intermediate_size=37, initializer_range=0.3)  # wide init: Q/K scores far from 0, the swap shows
_DEBERTA = dict(_SIZES, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
                norm_rel_ebd="layer_norm", max_position_embeddings=64)

# name -> (config factory, pad id). Two DeBERTa-v2 configs: v3-style shared Q/K for positions, and
# separate pos_query_proj / pos_key_proj.
CONFIGS = {
    "bert": (lambda: T.BertConfig(**_SIZES, max_position_embeddings=64), 0),
    "roberta": (lambda: T.RobertaConfig(**_SIZES, max_position_embeddings=64), 1),
    "xlm-roberta": (lambda: T.XLMRobertaConfig(**_SIZES, max_position_embeddings=64), 1),
    "camembert": (lambda: T.CamembertConfig(**_SIZES, max_position_embeddings=64), 1),
    "electra": (lambda: T.ElectraConfig(**_SIZES, embedding_size=16, max_position_embeddings=64), 0),
    "deberta-v2": (lambda: T.DebertaV2Config(**_DEBERTA, share_att_key=True), 0),
    "deberta-v2-own-pos-proj": (lambda: T.DebertaV2Config(**_DEBERTA, share_att_key=False), 0),
    "mpnet": (lambda: T.MPNetConfig(**_SIZES, max_position_embeddings=64), 1),
    "distilbert": (lambda: T.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=LAYERS, n_heads=2,
                                              hidden_dim=37, max_position_embeddings=64,
                                              initializer_range=0.3), 0),
    "modernbert": (lambda: T.ModernBertConfig(**_SIZES, local_attention=8, global_attn_every_n_layers=3,
                                              attention_bias=True, pad_token_id=0, bos_token_id=2,
                                              eos_token_id=3, cls_token_id=2, sep_token_id=3), 0),
}

# This file's own table of where each family keeps Q/K (independent of dist_peakd.models.sps_families).
LAYERS_AT = {"bert": "bert.encoder.layer", "electra": "electra.encoder.layer", "mpnet": "mpnet.encoder.layer",
             "deberta-v2": "deberta.encoder.layer", "distilbert": "distilbert.transformer.layer",
             "modernbert": "model.layers", "roberta": "roberta.encoder.layer",
             "xlm-roberta": "roberta.encoder.layer", "camembert": "roberta.encoder.layer"}
QK_AT = {"deberta-v2": [("attention.self.query_proj", "attention.self.key_proj"),
                        ("attention.self.pos_query_proj", "attention.self.pos_key_proj")],
         "mpnet": [("attention.attn.q", "attention.attn.k")],
         "distilbert": [("attention.q_lin", "attention.k_lin")]}


def qk_of(model_type: str) -> list[tuple[str, str]]:
    return QK_AT.get(model_type, [("attention.self.query", "attention.self.key")])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is several times faster on a busy machine; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def source_model(name: str) -> nn.Module:
    """The seeded 4-layer classifier of ``name`` (shared by the tests; none of them changes it)."""
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(CONFIGS[name][0]()).eval()


def inputs(name: str) -> dict[str, torch.Tensor]:
    """Random ids with padding at the end of rows 2 and 3."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = CONFIGS[name][1]
    return {"input_ids": ids, "attention_mask": mask}


def layers_of(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(LAYERS_AT[model.config.model_type])


def with_layers(model: nn.Module, layers: list[nn.Module]) -> nn.Module:
    parent, _, attr = LAYERS_AT[model.config.model_type].rpartition(".")
    setattr(model.get_submodule(parent), attr, nn.ModuleList(layers))
    return model


def bottom_k(source: nn.Module, k: int) -> nn.Module:
    """The family's own k-layer classifier holding the source's embeddings, bottom k layers and head."""
    cfg = copy.deepcopy(source.config)
    cfg.num_hidden_layers = k
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:k]
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    prefix = LAYERS_AT[cfg.model_type] + "."
    state = {n: t for n, t in source.state_dict().items()
             if not n.startswith(prefix) or int(n[len(prefix):].split(".")[0]) < k}
    model.load_state_dict(state, strict=True)
    return model


def swapped_copy(layer: nn.Module, model_type: str) -> nn.Module:
    """A deep copy of ``layer`` with Q and K swapped by copying weights and biases."""
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        if model_type == "modernbert":
            for name in ("weight", "bias"):
                w = getattr(twin.attn.Wqkv, name)
                q, k, v = w.detach().clone().chunk(3)
                w.copy_(torch.cat([k, q, v]))
        for q_path, k_path in qk_of(model_type):
            try:
                q_mod, k_mod = twin.get_submodule(q_path), twin.get_submodule(k_path)
            except AttributeError:
                continue
            for name in ("weight", "bias"):
                q_t, k_t = getattr(q_mod, name), getattr(k_mod, name)
                tmp = q_t.detach().clone()
                q_t.copy_(k_t)
                k_t.copy_(tmp)
    return twin


def reference_unrolled(source: nn.Module, k: int, schedule: list[tuple[int, bool]]) -> nn.Module:
    """The k-layer model run along ``schedule``: independent deep copies, swapped ones where asked."""
    ref = bottom_k(source, k)
    model_type = ref.config.model_type
    layers = [copy.deepcopy(layers_of(ref)[i]) if not s else swapped_copy(layers_of(ref)[i], model_type)
              for i, s in schedule]
    if model_type == "modernbert":  # the bottom layer re-run higher up gets a norm without parameters
        for pos, (i, _) in enumerate(schedule):
            if i == 0 and pos > 0:
                layers[pos].attn_norm = nn.LayerNorm(32, eps=ref.config.norm_eps, elementwise_affine=False)
    return with_layers(ref, layers)


def run(model: nn.Module, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = model(**inputs(name), output_hidden_states=True)
    return out.logits, [h[:, 0] for h in out.hidden_states[1:]]


def assert_close(student_out, logits: torch.Tensor, cls: list[torch.Tensor], tol: float) -> None:
    assert len(student_out.cls_states) == len(cls)
    assert (student_out.logits - logits).abs().max().item() <= tol
    for mine, theirs in zip(student_out.cls_states, cls, strict=True):
        assert (mine - theirs).abs().max().item() <= tol


FAMILY_NAMES = list(CONFIGS)


def test_every_supported_family_is_tested() -> None:
    assert set(SUPPORTED_FAMILIES) == set(LAYERS_AT) == {CONFIGS[n][0]().model_type for n in CONFIGS}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_none_equals_the_family_k_layer_model(name: str) -> None:
    source = source_model(name)
    student = sps_from_classifier(source, 3, "none").eval()
    assert student.schedule == [(0, False), (1, False), (2, False)]
    reference = bottom_k(source, 3)
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        logits, cls = run(reference, name)
        out = student(**inputs(name), labels=labels)
    assert_close(out, logits, cls, 1e-6)
    assert abs(out.loss.item() - torch.nn.functional.cross_entropy(logits, labels).item()) <= 1e-6


# k=2: L1 L2 L1* L2* (re-runs the bottom layer); k=4: L1..L4 L3* L4* (the top-half rule)
@pytest.mark.parametrize(("variant", "k"), [("shuffle", 2), ("shuffle", 4), ("share", 2)])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_schedule_equals_independent_unrolled_computation(name: str, variant: str, k: int) -> None:
    source = source_model(name)
    student = sps_from_classifier(source, k, variant).eval()
    assert student.num_effective_layers == (4 if k == 2 else 6)
    with torch.no_grad():
        logits, cls = run(reference_unrolled(source, k, student.schedule), name)
        assert_close(student(**inputs(name)), logits, cls, 1e-6)
        if variant == "shuffle" and k == 2:  # the swap changes the result: the comparison can fail
            _, shared = run(reference_unrolled(source, k, [(i, False) for i, _ in student.schedule]), name)
            assert (shared[-1] - cls[-1]).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_no_added_parameters_and_gradients_of_both_passes_accumulate(name: str) -> None:
    source = source_model(name)
    student = sps_from_classifier(source, 2, "shuffle").eval()
    plain_k = bottom_k(source, 2)
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in plain_k.parameters())
    assert len(list(student.parameters())) == len(list(plain_k.parameters()))
    ref = reference_unrolled(source, 2, student.schedule)
    student(**inputs(name)).logits.square().sum().backward()
    ref(**inputs(name)).logits.square().sum().backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    expected: dict[int, torch.Tensor] = {}
    prefix = LAYERS_AT[source.config.model_type]
    fused_twins = {f"{prefix}.{pos}.attn.Wqkv.{w}" for pos in (2, 3) for w in ("weight", "bias")}
    for n, p in student.model.named_parameters(remove_duplicate=False):  # every name a tensor runs under
        grad = ref_grads[n]
        if n in fused_twins:  # ModernBERT's second pass reads the fused projection with Q and K swapped
            q, k, v = grad.chunk(3)
            grad = torch.cat([k, q, v])
        expected[id(p)] = expected.get(id(p), 0) + grad
    checked = 0
    for p in student.parameters():
        assert torch.allclose(p.grad, expected[id(p)], rtol=1e-5, atol=1e-6)
        checked += 1
    q_path = "attn.Wqkv" if name == "modernbert" else qk_of(source.config.model_type)[0][0]
    bottom_q = layers_of(student.model)[0].get_submodule(q_path).weight  # runs in both passes:
    assert not torch.allclose(bottom_q.grad, ref_grads[f"{prefix}.0.{q_path}.weight"])  # not the first's alone
    assert checked == len(list(plain_k.parameters()))
    compact, reference = compact_state_dict(student), plain_k.state_dict()
    assert compact.keys() == reference.keys()
    assert all(torch.equal(compact[n], reference[n]) for n in reference)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_plain_export_is_a_standard_folder_equal_to_the_student(name: str, tmp_path) -> None:
    source = source_model(name)
    student = sps_from_classifier(source, 2, "shuffle").eval()
    unrolled_classifier(student).save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.py"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in saved and saved["model_type"] == source.config.model_type
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 4
    with torch.no_grad():
        logits, cls = run(reloaded, name)
        assert_close(student(**inputs(name)), logits, cls, 1e-5)


@pytest.mark.parametrize("name", ["roberta", "modernbert"])
def test_build_from_a_checkpoint_folder(name: str, tmp_path) -> None:
    source = source_model(name)
    source.save_pretrained(tmp_path)
    student = build_family_student(tmp_path, 2, "shuffle", num_labels=2).eval()
    expected = sps_from_classifier(source, 2, "shuffle").eval()
    assert student.config.num_hidden_layers == 2 and student.num_effective_layers == 4
    with torch.no_grad():
        theirs = expected(**inputs(name))
        assert_close(student(**inputs(name)), theirs.logits, list(theirs.cls_states), 1e-6)


def test_bert_shuffle_equals_the_hand_written_sps_bert() -> None:
    source = source_model("bert")
    student = sps_from_classifier(source, 2, "shuffle").eval()
    cfg = SPSBertConfig(**{**source.config.to_dict(), "num_hidden_layers": 2, "sps_variant": "shuffle"})
    old = SPSBertForSequenceClassification(cfg).eval()
    old.load_state_dict(bottom_k(source, 2).state_dict(), strict=True)
    with torch.no_grad():
        mine, theirs = student(**inputs("bert")), old(**inputs("bert"))
    assert (mine.logits - theirs.logits).abs().max().item() <= 1e-5
    for a, b in zip(mine.cls_states, theirs.cls_states, strict=True):
        assert (a - b).abs().max().item() <= 1e-5


def test_refusals_name_the_problem(tmp_path) -> None:
    gpt2 = AutoModelForSequenceClassification.from_config(T.GPT2Config(n_layer=2, n_embd=32, n_head=2,
                                                                       vocab_size=VOCAB, pad_token_id=0))
    with pytest.raises(ModelConfigError, match=r"model_type 'gpt2'.*'modernbert'"):
        sps_from_classifier(gpt2, 1)
    gpt2.save_pretrained(tmp_path)
    with pytest.raises(ModelConfigError, match=r"student backbone '.*' has model_type 'gpt2'"):
        build_family_student(tmp_path, 1)
    source = source_model("roberta")
    with pytest.raises(ModelConfigError, match=r"k must be an integer in 1\.\.4.*got 5"):
        sps_from_classifier(source, 5)
    with pytest.raises(ModelConfigError, match="unknown SPS variant 'mirror'"):
        sps_from_classifier(source, 2, "mirror")


def _deberta_scores(attn: nn.Module, x: torch.Tensor, rel_pos: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """Pre-softmax scores of a DeBERTa-v2 attention: content + disentangled position terms."""
    n, sf = attn.num_attention_heads, 1 + len(attn.pos_att_type)
    q, k = attn.transpose_for_scores(attn.query_proj(x), n), attn.transpose_for_scores(attn.key_proj(x), n)
    content = q @ k.transpose(-1, -2) / (q.size(-1) * sf) ** 0.5
    return content + attn.disentangled_attention_bias(q, k, rel_pos, rel, sf)


@pytest.mark.parametrize("name", ["deberta-v2", "deberta-v2-own-pos-proj"])
def test_deberta_swap_covers_the_position_projections(name: str) -> None:
    """The twin swaps every query-side and key-side projection, the position ones too, so its scores
    are the original's transposed with relative distances mirrored (content and both position terms)."""
    student = sps_from_classifier(source_model(name), 2, "shuffle").eval()
    enc = student.model.deberta.encoder
    x = torch.randn(1, 10, 32, generator=torch.Generator().manual_seed(2))
    rel_pos, rel = enc.get_rel_pos(x), enc.get_rel_embedding()
    bottom, twin = enc.layer[0].attention.self, enc.layer[2].attention.self
    with torch.no_grad():
        original_mirrored = _deberta_scores(bottom, x, -rel_pos, rel)
        swapped = _deberta_scores(twin, x, rel_pos, rel)
        plain = _deberta_scores(bottom, x, rel_pos, rel)
    assert (swapped - original_mirrored.transpose(-1, -2)).abs().max().item() <= 1e-5
    assert (swapped - plain.transpose(-1, -2)).abs().max().item() > 1e-2  # positions are not just transposed
