"""``--student sps|plain``: which kind of student the PTP and distillation stages train.

- ``sps`` (the default, Pea-KD): ``--k`` parameter layers from the backbone's bottom layers, run as the
  ``--variant`` schedule (:mod:`dist_peakd.models.configuration_sps_bert`). Unchanged by this module.
- ``plain``: a plain encoder of ``--depth d`` layers, each run once, copied from the backbone's layers
  chosen by ``--layer_map``:

  - ``bottom``: layers ``0 .. d-1``;
  - ``alternate``: layer ``floor(i * L / d)`` for ``i = 0 .. d-1`` (``L`` = the backbone's layers): every
    other layer when ``d = L/2`` (DistilBERT's rule; 6 of 12: 0,2,4,6,8,10; 3 of 6: 0,2,4), evenly
    spread from the bottom otherwise (2 of 6: 0,3);
  - a comma list ``"0,2,4"``: those 0-based backbone layers, strictly increasing, in ``0 .. L-1``, ``d``
    of them.

  It is the SPS student with variant ``none`` and ``k = d`` (numerically a d-layer BERT) whose layers
  are copied per the map; its ``best/`` and ``final/`` distillation exports are standard ``bert``
  folders (``BertForSequenceClassification``, no custom code). Patient-KD matches its ``d`` layers by
  the rule every student uses (student layer ``j`` <-> teacher layer ``j * L_teacher / d``, 1-based,
  rounded half up: :func:`dist_peakd.distill.patient_layer_map`), whatever the layer map.
  ``--depth auto`` = ``ceil(L_teacher / 2)`` (half the teacher's compute).

Options are checked twice: their spelling and combination in ``validate`` (no file read), the depth and
the map against the backbone in :func:`.depth.resolve_plain` (before a stage claims its folder).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

STUDENTS: tuple[str, ...] = ("sps", "plain")
LAYER_MAPS: tuple[str, ...] = ("bottom", "alternate")
#: ``--variant``'s default: shuffle for an SPS student, none (each layer once) for a plain one.
VARIANT_AUTO = "auto"

STUDENT_HELP = "sps (Pea-KD SPS student, --k/--variant) | plain (a plain encoder of --depth layers, --layer_map)"
DEPTH_HELP = "plain student: its layers, 1..L of the backbone, or auto = ceil(L/2) of the teacher's layers"
LAYER_MAP_HELP = ("plain student: the backbone layers it copies: bottom (0..d-1) | alternate (floor(i*L/d): every "
                  "other layer when d = L/2) | a comma list of 0-based layers, e.g. 0,2,4")


def is_plain(opts: Any) -> bool:
    return getattr(opts, "student", "sps") == "plain"


def fill_defaults(opts: Any) -> None:
    """``__post_init__``: an SPS student's ``--variant auto`` (the default) is ``shuffle``; a plain student's stays
    ``auto`` until :func:`.depth.resolve_plain` makes it ``none`` (so a given share/shuffle can be refused)."""
    from .cross_student import fill_cross_defaults  # issue 23 item 4: --student_backbone is a plain student

    fill_cross_defaults(opts)
    if getattr(opts, "student", "sps") != "plain" and opts.variant == VARIANT_AUTO:
        opts.variant = "shuffle"


def parse_layer_map(value: Any) -> str | list[int]:
    """``bottom`` | ``alternate`` | the list of indices (syntax only: ints, strictly increasing, >= 0)."""
    if isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value).strip()
    if text.lower() in LAYER_MAPS:
        return text.lower()
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"option layer_map: {value!r} is not one of {list(LAYER_MAPS)} nor a comma list of 0-based "
                          "layer indices (e.g. 0,2,4)")
    indices = [int(p) for p in parts]
    if any(b <= a for a, b in zip(indices, indices[1:], strict=False)):
        raise ConfigError(f"option layer_map: {text!r} must be strictly increasing layer indices")
    return indices


def validate_student(opts: Any) -> None:
    """Refuse an unknown kind and the options that do not belong to it (one line each; nothing read)."""
    from .depth_rules import normalise_k

    if opts.student not in STUDENTS:
        raise ConfigError(f"option student: {opts.student!r} is not one of {list(STUDENTS)}")
    layer_map = parse_layer_map(opts.layer_map)
    if opts.student == "sps":
        if opts.depth is not None:
            raise ConfigError(f"option depth: {opts.depth!r} is the plain student's depth; the SPS student's is --k "
                              "(or pass --student plain)")
        if layer_map != "bottom":
            raise ConfigError(f"option layer_map: {opts.layer_map!r} applies to --student plain only; the SPS student "
                              "takes the backbone's bottom k layers")
        return
    if opts.depth is None:
        raise ConfigError("option depth: --student plain needs --depth (an integer 1..L of the backbone's layers, "
                          "or auto = half the teacher's layers)")
    depth = normalise_k(opts.depth, "depth")
    if opts.variant not in (VARIANT_AUTO, "none"):
        raise ConfigError(f"option variant: {opts.variant!r} is an SPS schedule; a plain student runs each layer once "
                          "(leave --variant out, or use --student sps)")
    if normalise_k(opts.k) != "auto" and opts.k != depth:  # k == depth: already resolved (k=depth, variant=none)
        raise ConfigError(f"option k: {opts.k!r} is the SPS student's depth; a plain student's is --depth")
    if isinstance(layer_map, list) and isinstance(depth, int) and len(layer_map) != depth:
        raise ConfigError(f"option layer_map: {opts.layer_map!r} names {len(layer_map)} layer(s), --depth is {depth}")
    opts.depth = depth


def layer_indices(layer_map: Any, depth: int, layers: int) -> list[int]:
    """The 0-based backbone layers a plain student of ``depth`` layers copies (module docstring)."""
    if not 1 <= depth <= layers:
        raise ConfigError(f"option depth: {depth} is outside 1..{layers} (the backbone's layers)")
    parsed = parse_layer_map(layer_map)
    if parsed == "bottom":
        return list(range(depth))
    if parsed == "alternate":
        return [i * layers // depth for i in range(depth)]
    if len(parsed) != depth:
        raise ConfigError(f"option layer_map: {layer_map!r} names {len(parsed)} layer(s), --depth is {depth}")
    if parsed[-1] >= layers:
        raise ConfigError(f"option layer_map: layer {parsed[-1]} is outside 0..{layers - 1} (the backbone's layers)")
    return parsed


def map_tag(layer_map: Any) -> str:
    """The layer map in folder names: ``bot``, ``alt`` or ``m0-2-4``."""
    parsed = parse_layer_map(layer_map)
    if isinstance(parsed, list):
        return "m" + "-".join(str(i) for i in parsed)
    return {"bottom": "bot", "alternate": "alt"}[parsed]


def plain_tag(opts: Any) -> str | None:
    """``plain-d<d>-<map>`` for a plain student (the part of its stage folder names), None for SPS."""
    if not is_plain(opts):
        return None
    from .cross_student import cross_tag, is_cross  # issue 23 item 4: the student checkpoint in the name

    kind = cross_tag(opts) if is_cross(opts) else "plain"
    return f"{kind}-d{opts.depth}-{map_tag(opts.layer_map)}"


def backbone_layers(opts: Any) -> int:
    from transformers import AutoConfig

    from .cross_student import student_source  # issue 23 item 4: --student_backbone, else --backbone

    return int(AutoConfig.from_pretrained(student_source(opts)).num_hidden_layers)


def plain_summary(opts: Any) -> dict[str, Any]:
    """What a plain student's summary and card record about its shape."""
    from .cross_student import cross_summary

    return {"student": "plain", "depth": opts.depth,
            "layer_map": opts.layer_map if isinstance(parse_layer_map(opts.layer_map), str) else "list",
            "backbone_layers": layer_indices(opts.layer_map, opts.depth, backbone_layers(opts)),
            **cross_summary(opts)}
