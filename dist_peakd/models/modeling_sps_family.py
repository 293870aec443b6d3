"""The SPS student of any supported encoder family: Shuffled Parameter Sharing as weight tying.

Self-contained (imports only torch, transformers and the two ``configuration_sps_*.py`` files next to
it): dist-peakd copies it verbatim into every exported folder of a non-BERT SPS student, so the folder
loads with ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` in a
process without dist-peakd.

:class:`SPSFamilyForSequenceClassification` holds the family's own ``k``-layer
``AutoModelForSequenceClassification`` (``self.model``: its ``state_dict`` is exactly that model's,
under ``model.``). Each forward installs the *effective* layer list of the schedule
``[(param_layer, swap_qk), ...]`` (:func:`effective_layers`) and runs the family's own forward and
attention kernels unchanged: a re-run layer is a *twin*, a structural copy whose parameters are the
parameter layer's own ``Parameter`` objects (no new tensors; gradients of both passes accumulate). In
a swapped twin each query projection's weight and bias are the key projection's and back; a fused
``[Q; K; V]`` projection (ModernBERT ``Wqkv``) is replaced by :class:`SwappedQKLinear`. The twins are
made per forward (a few module copies, no tensor copies), so loading, ``.to()``, ``train()`` and
gradient checkpointing of the parameter layers always reach them.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_sps_bert import ModelConfigError
from .configuration_sps_family import FamilySpec, SPSFamilyConfig, family_of


def layer_list(model: nn.Module, spec: FamilySpec) -> nn.ModuleList:
    """The encoder's layer ``ModuleList`` of a family classifier."""
    layers = model.get_submodule(spec.layers)
    if not isinstance(layers, nn.ModuleList):
        raise ModelConfigError(f"{spec.model_type}: {spec.layers!r} is a {type(layers).__name__}, not a ModuleList")
    return layers


def set_layer_list(model: nn.Module, spec: FamilySpec, layers: nn.ModuleList) -> None:
    """Replace the encoder's layer ``ModuleList``."""
    parent, _, name = spec.layers.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, layers)


def qk_pairs_present(layer: nn.Module, spec: FamilySpec) -> list[tuple[str, str]]:
    """The ``(query, key)`` module paths of ``layer`` to swap: the required pairs, plus each optional
    pair whose two modules both exist."""
    pairs = list(spec.qk_pairs)
    for q_path, k_path in spec.optional_qk_pairs:
        if _has_submodule(layer, q_path) and _has_submodule(layer, k_path):
            pairs.append((q_path, k_path))
    return pairs


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def swap_qk_rows(tensor: Tensor | None) -> Tensor | None:
    """``[Q; K; V]`` stacked along dim 0 (three equal blocks) -> ``[K; Q; V]``. Its own inverse."""
    if tensor is None:
        return None
    q, k, v = tensor.chunk(3, dim=0)
    return torch.cat((k, q, v), dim=0)


class SwappedQKLinear(nn.Module):
    """A fused ``[Q; K; V]`` ``Linear`` run with its Q and K blocks swapped (weights and biases).

    Its ``weight`` / ``bias`` are the source ``Linear``'s own ``Parameter`` objects. In ``state_dict``
    it appears as a plain ``Linear`` holding the swapped values (what the unrolled export stores);
    loading such an entry writes it back, swapped, into the shared tensors.
    """

    def __init__(self, source: nn.Linear) -> None:
        super().__init__()
        if source.out_features % 3:
            raise ModelConfigError(f"fused QKV projection has {source.out_features} outputs, not a multiple of 3")
        self.weight, self.bias = source.weight, source.bias
        self.in_features, self.out_features = source.in_features, source.out_features

    def forward(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, swap_qk_rows(self.weight), swap_qk_rows(self.bias))

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        for name in ("weight", "bias"):
            value = getattr(self, name)
            if value is not None:
                value = swap_qk_rows(value)
                destination[prefix + name] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        for name in ("weight", "bias"):
            target = getattr(self, name)
            if target is None:
                continue
            if prefix + name not in state_dict:
                missing_keys.append(prefix + name)
                continue
            with torch.no_grad():
                target.copy_(swap_qk_rows(state_dict[prefix + name]))


def _tie(twin_module: nn.Module, source: nn.Module) -> None:
    """Give ``twin_module`` the weight and bias ``Parameter`` objects of ``source`` (or its ``None`` bias)."""
    for name in ("weight", "bias"):
        setattr(twin_module, name, getattr(source, name))


def make_twin(layer: nn.Module, spec: FamilySpec, swap_qk: bool, first_layer: bool,
              config: PretrainedConfig) -> nn.Module:
    """A structural copy of ``layer`` that shares all its parameters and buffers, Q/K swapped if asked.

    ``first_layer``: ``layer`` is the encoder's bottom layer; for a family with ``first_layer_norm``
    its missing input norm becomes a parameter-free LayerNorm in the twin (the twin runs higher up,
    on an un-normalised residual stream, where every other layer of the family has that norm).
    """
    memo = {id(t): t for t in itertools.chain(layer.parameters(), layer.buffers())}
    memo[id(config)] = config
    twin = copy.deepcopy(layer, memo)
    if swap_qk:
        for q_path, k_path in qk_pairs_present(layer, spec):
            _tie(twin.get_submodule(q_path), layer.get_submodule(k_path))
            _tie(twin.get_submodule(k_path), layer.get_submodule(q_path))
        if spec.fused_qkv:
            parent, _, name = spec.fused_qkv.rpartition(".")
            setattr(twin.get_submodule(parent), name, SwappedQKLinear(layer.get_submodule(spec.fused_qkv)))
    if first_layer and spec.first_layer_norm:
        parent, _, name = spec.first_layer_norm.rpartition(".")
        if isinstance(twin.get_submodule(spec.first_layer_norm), nn.Identity):
            eps = getattr(config, "norm_eps", getattr(config, "layer_norm_eps", 1e-5))
            setattr(twin.get_submodule(parent), name, nn.LayerNorm(config.hidden_size, eps=eps,
                                                                   elementwise_affine=False))
    return twin


def effective_layers(layers: list[nn.Module], schedule: list[tuple[int, bool]], spec: FamilySpec,
                     config: PretrainedConfig) -> list[nn.Module]:
    """One module per schedule entry: parameter layer ``p`` itself at position ``p`` (unswapped), a twin
    (:func:`make_twin`) everywhere else."""
    return [layers[i] if pos == i and not swap else make_twin(layers[i], spec, swap, i == 0, config)
            for pos, (i, swap) in enumerate(schedule)]


@dataclass
class SPSFamilyClassifierOutput(SequenceClassifierOutput):
    """``SequenceClassifierOutput`` plus ``cls_states``: the [CLS] vector (position 0) after every
    effective layer, bottom to top (``E`` tensors ``[B, H]``)."""

    cls_states: tuple[torch.FloatTensor, ...] | None = None


class SPSFamilyForSequenceClassification(PreTrainedModel):
    """A family classifier of ``k`` parameter layers run along ``config.sps_schedule`` (module docstring)."""

    config_class = SPSFamilyConfig
    config: SPSFamilyConfig
    base_model_prefix = "sps"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: SPSFamilyConfig) -> None:
        super().__init__(config)
        self.family = family_of(config.base_model_type)
        self.model = AutoModelForSequenceClassification.from_config(config.family_config())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        self.model._init_weights(module)

    @property
    def schedule(self) -> list[tuple[int, bool]]:
        return self.config.schedule

    @property
    def num_effective_layers(self) -> int:
        return len(self.config.sps_schedule)

    @contextlib.contextmanager
    def unrolled(self) -> Iterator[nn.Module]:
        """The family classifier with its effective layers installed (restored on exit)."""
        layers = layer_list(self.model, self.family)
        effective = effective_layers(list(layers), self.schedule, self.family, self.model.config)
        set_layer_list(self.model, self.family, nn.ModuleList(effective))
        try:
            yield self.model
        finally:
            set_layer_list(self.model, self.family, layers)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> SPSFamilyClassifierOutput | tuple:
        """Logits, the [CLS] vector after every effective layer, the loss when ``labels`` are given.

        ``token_type_ids`` is passed on only to families whose forward takes it; ``output_hidden_states``
        adds the embeddings output and every effective layer's output.
        """
        if token_type_ids is not None and self.family.token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        kwargs.pop("output_attentions", None)
        with self.unrolled() as model:
            out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                        return_dict=True, **kwargs)
        loss = None
        if labels is not None:
            n = self.config.num_labels
            loss = (F.mse_loss(out.logits.squeeze(-1).float(), labels.float()) if n == 1
                    else F.cross_entropy(out.logits.float().view(-1, n), labels.view(-1)))
        want_hidden = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        result = SPSFamilyClassifierOutput(
            loss=loss, logits=out.logits, hidden_states=out.hidden_states if want_hidden else None,
            cls_states=tuple(h[:, 0] for h in out.hidden_states[1:]))
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return result if use_dict else result.to_tuple()


__all__ = [
    "SPSFamilyClassifierOutput",
    "SPSFamilyForSequenceClassification",
    "SwappedQKLinear",
    "effective_layers",
    "layer_list",
    "make_twin",
    "qk_pairs_present",
    "set_layer_list",
    "swap_qk_rows",
]
