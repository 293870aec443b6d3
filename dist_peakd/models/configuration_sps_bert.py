"""Configuration of the SPS (Shuffled Parameter Sharing) BERT student.

Self-contained (imports only transformers, huggingface_hub, packaging and the standard library): dist-peakd copies this file
verbatim into every exported model folder, next to ``modeling_sps_bert.py``, so that
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` works
without dist-peakd installed.

``num_hidden_layers`` is the number of *parameter* layers ``k``; ``sps_schedule`` lists the
effective layers the model runs, as ``[param_layer, swap_qk]`` pairs (0-based).

In ``config.json``, ``num_hidden_layers`` of a student whose schedule is not plain ``L1..Lk`` is
written as ``{"parameter_layers": k, "effective_layers": E, "note": ...}``. This class reads it back
as ``k``, the base ``PreTrainedConfig`` (what ``AutoTokenizer`` falls back to) accepts it, and a plain
``BertConfig`` rejects it (its field is typed ``int``), so ``BertForSequenceClassification.from_pretrained``
on an SPS folder fails loudly, printing the note, instead of silently loading a k-layer BERT without the
second pass. A ``none`` student (exactly a k-layer BERT) keeps the plain integer and loads identically.
"""

from __future__ import annotations

from typing import Any

import transformers
from packaging.version import Version

#: The oldest transformers this code runs with: 5.4 made ``PreTrainedConfig`` a strict
#: (``huggingface_hub.dataclasses.strict``) dataclass, which ``SPSBertConfig`` subclasses (tried: 5.3.0
#: and 4.57.6 fail with ``StrictDataclassDefinitionError``; 5.4.0, 5.5.0, 5.12.0, 5.25.0 load and run).
MIN_TRANSFORMERS = "5.4.0"


def check_transformers_version(installed: str | None = None) -> None:
    """Refuse a transformers older than :data:`MIN_TRANSFORMERS` with an ImportError naming both versions
    (instead of the ``StrictDataclassDefinitionError`` the class definition below would raise)."""
    installed = installed or transformers.__version__
    if Version(installed).release < Version(MIN_TRANSFORMERS).release:
        raise ImportError(
            f"this SPS student (configuration_sps_bert.py) needs transformers >= {MIN_TRANSFORMERS}; installed: "
            f"transformers {installed}. Upgrade (pip install 'transformers>={MIN_TRANSFORMERS}'), or use the plain "
            "export (dist-peakd export --format plain), a standard BERT folder without custom code"
        )


check_transformers_version()

from huggingface_hub.dataclasses import strict  # noqa: E402  (after the version check: 4.x has no strict configs)
from transformers import BertConfig  # noqa: E402

VARIANTS: tuple[str, ...] = ("none", "share", "shuffle")


try:  # inside dist-peakd: the package's error type (it carries the CLI exit code)
    from dist_peakd.errors import ModelConfigError
except ImportError:  # a copy shipped in an export folder, loaded without dist-peakd

    class ModelConfigError(ValueError):
        """An invalid model request: bad ``k``, unknown SPS variant, or a checkpoint of the wrong family."""


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ModelConfigError(f"unknown SPS variant {variant!r}; valid variants: {list(VARIANTS)}")


def sps_schedule(k: int, variant: str) -> list[tuple[int, bool]]:
    """Effective-layer schedule ``[(param_layer, swap_qk), ...]`` (0-based) of a ``k``-layer student.

    - ``none``: ``L1..Lk`` once (a plain k-layer BERT), any ``k >= 1``.
    - ``share`` / ``shuffle`` (``swap_qk`` is True in the second pass only for ``shuffle``):
        - ``k <= 3`` (paper): ``L1..Lk`` then ``L1..Lk`` again, same order -> ``2k`` effective layers.
        - ``k >= 4`` (paper for ``k = 6``; our rule for the other ``k``): ``L1..Lk`` then the **top
          half** ``L(k - k//2 + 1)..Lk`` reused once, in order -> ``k + k//2`` effective layers.
          k=4: L1..L4, L3*, L4*; k=5: L1..L5, L4*, L5*; k=6: L1..L6, L4*, L5*, L6* (paper);
          k=12: L1..L12, L7*..L12*.

    Raises:
        ModelConfigError: ``k < 1`` or an unknown variant.
    """
    check_variant(variant)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ModelConfigError(f"k (number of student parameter layers) must be an integer >= 1, got {k!r}")
    first = [(i, False) for i in range(k)]
    if variant == "none":
        return first
    swap = variant == "shuffle"
    reused = range(k) if k <= 3 else range(k - k // 2, k)
    return first + [(i, swap) for i in reused]


def normalise_schedule(schedule: Any, num_layers: int) -> list[list[int | bool]]:
    """Validate a schedule against ``num_layers`` and return it in its JSON form ``[[int, bool], ...]``."""
    out: list[list[int | bool]] = []
    try:
        pairs = [(entry[0], entry[1]) for entry in schedule]
    except (TypeError, IndexError, KeyError) as err:
        raise ModelConfigError(f"sps_schedule must be a list of [param_layer, swap_qk] pairs, got {schedule!r}") from err
    if not pairs:
        raise ModelConfigError("sps_schedule is empty")
    for layer, swap in pairs:
        if isinstance(layer, bool) or int(layer) != layer or not 0 <= int(layer) < num_layers:
            raise ModelConfigError(
                f"sps_schedule entry {[layer, swap]!r} refers to a parameter layer outside 0..{num_layers - 1}"
            )
        out.append([int(layer), bool(swap)])
    return out


@strict(accept_kwargs=True)
class SPSBertConfig(BertConfig):
    """``BertConfig`` of an SPS student; ``num_hidden_layers`` is the number of *parameter* layers ``k``.

    Extra fields (saved in ``config.json``): ``sps_variant`` (one of :data:`VARIANTS`),
    ``sps_schedule`` (``[[param_layer, swap_qk], ...]``, 0-based; derived from ``num_hidden_layers``
    and ``sps_variant`` with :func:`sps_schedule` when not given). See the module docstring for how
    ``num_hidden_layers`` is written.
    """

    model_type = "sps-bert"

    num_hidden_layers: int | dict = 12
    sps_variant: str = "shuffle"
    sps_schedule: list | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.num_hidden_layers, dict):
            try:
                self.num_hidden_layers = int(self.num_hidden_layers["parameter_layers"])
            except (KeyError, TypeError, ValueError) as err:
                raise ModelConfigError(
                    f"num_hidden_layers {self.num_hidden_layers!r}: expected an integer or "
                    '{"parameter_layers": k, ...}'
                ) from err
        check_variant(self.sps_variant)
        if self.sps_schedule is None:
            self.sps_schedule = [[i, s] for i, s in sps_schedule(self.num_hidden_layers, self.sps_variant)]
        else:
            self.sps_schedule = normalise_schedule(self.sps_schedule, self.num_hidden_layers)
        super().__post_init__(**kwargs)

    @property
    def is_plain_bert(self) -> bool:
        """The schedule is ``L1..Lk`` once, unswapped: numerically a k-layer BERT."""
        return self.schedule == [(i, False) for i in range(self.num_hidden_layers)]

    def to_dict(self) -> dict[str, Any]:
        """As ``BertConfig.to_dict``, with ``num_hidden_layers`` in its guarded form (module docstring)."""
        out = super().to_dict()
        if not self.is_plain_bert:
            k, e = self.num_hidden_layers, len(self.sps_schedule)
            how = "layers re-used, query/key swapped" if any(s for _, s in self.schedule) else "layers re-used"
            out["num_hidden_layers"] = {
                "parameter_layers": k,
                "effective_layers": e,
                "note": f"SPS student: {k} parameter layers run as {e} effective layers ({how}), which a plain BERT cannot express; load it with "
                        "AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True), "
                        "or use the plain (unrolled) export for BERT runtimes",
            }
        return out

    @property
    def schedule(self) -> list[tuple[int, bool]]:
        """The schedule as ``(param_layer, swap_qk)`` tuples."""
        return [(int(i), bool(s)) for i, s in self.sps_schedule]

    @property
    def num_effective_layers(self) -> int:
        return len(self.sps_schedule)


__all__ = ["MIN_TRANSFORMERS", "VARIANTS", "ModelConfigError", "SPSBertConfig", "check_transformers_version",
           "sps_schedule"]
