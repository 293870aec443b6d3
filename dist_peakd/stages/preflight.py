"""The run's checkpoints checked before any stage trains or writes anything: a refusal is one line, exit 2.

Every training command calls :func:`check_models` first (finetune-teacher, cache-teacher, ptp, distill,
pipeline, sweep), so a model that a later stage could not use is refused before an earlier one trains.
It reads ``config.json`` files, safetensors headers, records and tokenizers only; which families each
role accepts lives in :mod:`dist_peakd.models.families`.

- backbone: a folder or hub id with a config and safetensors weights, of a type the SPS student can be
  built from (the teacher is fine-tuned from it too), with a tokenizer;
- teacher (needed by cache-teacher, and by pipeline/sweep when ``--teacher_dir`` is given; checked
  wherever it exists): a supported family and not a student, trained on this run's task (its record),
  with a trained head whose classes (its ``id2label``) match the task's by name or, generic ``LABEL_i``,
  by index, tokenizing like the backbone (the student reads the teacher cache by the backbone's token
  ids: two tokenizers are named as such, never sent to ``--rebuild``), and, where Patient-KD runs
  (``beta`` > 0), as wide as the backbone;
- the teacher cache (ptp, distill without a teacher folder): built with the backbone's tokenizer, as wide
  as the backbone under Patient-KD;
- ``k`` (each swept value): within the backbone's layers;
- the PTP encoder (distill with ``use_ptp``; pipeline/sweep when ``--ptp_dir`` is given): present, an SPS
  student of this run's k and variant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..layout import CACHE_MANIFEST, EXPORT_RECORD, MODEL_CONFIG
from ..models.families import family_refusal, has_trained_head, read_config, read_model_type
from .common import check_model_source, load_tokenizer_or_refuse

STUDENT_STAGES = ("ptp", "distill", "pipeline", "sweep")


def check_models(opts: Any, stage: str, task: Any = None) -> None:
    """Refuse (ConfigError naming the option, folder, model type and what to do) a backbone, teacher, teacher
    cache, ``k`` or PTP encoder that ``stage`` (or a stage after it) cannot use. ``task``: the run's
    :class:`~dist_peakd.data.Task` once the data are read (else a GLUE task is looked up, own data unknown).

    The training stages call it once their data are checked and before ``data.json`` is written
    (:func:`.common.load_run_data`'s ``before_record``); pipeline and sweep also call it first of all."""
    from .cross_student import is_cross, student_source  # issue 23 item 4: --student_backbone

    cross = is_cross(opts) and stage in STUDENT_STAGES
    if cross:
        from .cross_preflight import check_cross_student

        check_cross_student(opts, stage, task)
    backbone = check_model_source(opts.backbone)
    _verified(backbone, opts)
    _refuse(family_refusal("backbone", "backbone", backbone, _model_type(backbone)))
    backbone_tokens = tokenizer_fingerprint_of("backbone", backbone)
    layout = opts.layout()
    teacher_needed = stage == "cache-teacher" or (
        stage in ("pipeline", "sweep") and layout.teacher_is_given and not getattr(opts, "teacher_cache_dir", None))
    teacher_found = (Path(layout.teacher) / MODEL_CONFIG).is_file()
    if teacher_needed or teacher_found:
        check_teacher(opts, Path(layout.teacher), backbone, backbone_tokens, task, stage, same_tokens=not cross)
    elif stage in ("ptp", "distill") and not cross:  # a cross student tokenizes the text itself
        check_cache_tokenizer(Path(layout.teacher_cache), backbone, backbone_tokens, opts, stage)
    if stage in STUDENT_STAGES:
        from .depth import resolve_k

        resolved, _ = resolve_k(opts)
        student = student_source(opts)  # the checkpoint the student is built from
        _check_zero3(opts, student)
        _check_family_layer_map(resolved, student)
        for k in _depths(resolved, stage):
            check_k_against_backbone(int(k), student)
        # distill: its encoder; pipeline/sweep: a given one (--ptp_dir), before anything trains
        given = stage in ("pipeline", "sweep") and getattr(resolved, "ptp_dir", None)
        if getattr(resolved, "use_ptp", False) and (stage == "distill" or given):
            check_ptp_encoder(resolved)


def _verified(folder: str | Path, opts: Any) -> None:
    """A dist-peakd export is checked against its file manifest before anything of it is read, so a damaged
    file is named as such (exit 4), not taken for a wrong model."""
    if Path(folder).is_dir():
        from ..integrity import verify_export

        verify_export(folder, trust_unverified=bool(getattr(opts, "trust_unverified", False)))


def _check_zero3(opts: Any, backbone: str) -> None:
    """The SPS student of a non-BERT family re-runs its layers through twins that ZeRO-3's per-module
    parameter gathering does not see: refused with ZeRO stage 3 (stages 0-2 are fine)."""
    model_type = _model_type(backbone)
    if model_type in (None, "bert") or not hasattr(opts, "ds_config"):
        return
    zero = getattr(opts, "zero_stage", None)
    if zero is None:
        from ..engine.ds_config import load_ds_config

        zero = load_ds_config(opts.ds_config).get("zero_optimization", {}).get("stage", 0)
    if zero == 3:
        raise ConfigError(f"option zero_stage: the SPS student of the {model_type} backbone {backbone} runs its "
                          "layers a second time through weight-tied copies, which ZeRO stage 3 does not gather; use "
                          "ZeRO 0-2 (the student is small: stage 2 shards its optimizer state and gradients)")


def _check_family_layer_map(opts: Any, backbone: str) -> None:
    """A plain student of a family whose bottom layer has no input norm (ModernBERT) must start at layer 0."""
    from ..models.configuration_sps_family import FAMILIES
    from .student_kind import is_plain, layer_indices

    spec = FAMILIES.get(_model_type(backbone) or "")
    if spec is None or not spec.first_layer_norm or not is_plain(opts) or not isinstance(opts.depth, int):
        return
    from transformers import AutoConfig

    layers = layer_indices(opts.layer_map, opts.depth, int(AutoConfig.from_pretrained(backbone).num_hidden_layers))
    if layers[0] != 0:
        raise ConfigError(f"option layer_map: {opts.layer_map} copies backbone layers {layers}; a {spec.model_type} "
                          f"student's bottom layer must be the backbone's layer 0 (the family's bottom layer has no "
                          f"input norm, which layer {layers[0]} needs): start the layer map at 0")


def _refuse(message: str | None) -> None:
    if message:
        raise ConfigError(message)


def _model_type(source: str) -> str | None:
    if Path(source).is_dir():
        return read_model_type(source)
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(source), "model_type", None)  # a hub id check_model_source fetched


def _depths(opts: Any, stage: str) -> list[Any]:
    if stage != "sweep":
        return [opts.k]
    from ..sweep.space import values_of

    return list(values_of("k", opts.dimensions(), opts.k))


def tokenizer_fingerprint_of(option: str, source: str) -> str:
    """The fingerprint of the tokenizer a model option's folder or hub id holds (refused when it has none)."""
    from ..data import tokenizer_fingerprint

    needs = "a model folder needs its tokenizer files (tokenizer.json, or vocab.txt + tokenizer_config.json)"
    return tokenizer_fingerprint(load_tokenizer_or_refuse(option, source, needs,
                                                          empty=": every word would be [UNK]"))


def _run_task(opts: Any) -> Any:
    """The run's task when it is known without reading data (a GLUE task), else None."""
    from ..data import glue_task

    return glue_task(opts) if opts.data_options().is_glue else None


def _record(folder: Path) -> dict:
    try:
        record = json.loads((folder / EXPORT_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _record_task(folder: Path) -> str | None:
    task = _record(folder).get("task")
    return str(task) if task else None


def check_k_against_backbone(k: int, backbone_path: str) -> None:
    """Refuse a depth larger than the backbone's layer count."""
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(backbone_path).num_hidden_layers
    if k > layers:
        raise ConfigError(f"option k: student depth {k} exceeds the backbone's {layers} layers ({backbone_path}): "
                          f"the student's k layers are the backbone's bottom ones; choose --k from 1 to {layers}, "
                          "or --k auto")


def check_teacher(opts: Any, teacher: Path, backbone: str, backbone_tokens: str, task: Any = None,
                  stage: str = "cache-teacher", same_tokens: bool = True) -> None:
    """The teacher folder: present, a teacher family, this run's task, a trained head of classes that match the
    task's, the backbone's tokenizer, the backbone's width where Patient-KD runs (``same_tokens=False``: a student
    from another checkpoint, which tokenizes itself and maps its width: neither is compared)."""
    if not (teacher / MODEL_CONFIG).is_file():
        raise ConfigError(f"option teacher_dir: teacher folder {teacher} not found (no config.json); run "
                          "finetune-teacher first or pass --teacher_dir")
    check_model_source(str(teacher), "teacher_dir")
    _verified(teacher, opts)
    _refuse(family_refusal("teacher", "teacher_dir", str(teacher), read_model_type(teacher)))
    task = task if task is not None else _run_task(opts)
    run_task = task.name if task is not None else str(opts.task)
    trained_on = _record_task(teacher)
    if trained_on is not None and trained_on != run_task:
        raise ConfigError(f"option teacher_dir: {teacher} was trained on task {trained_on!r} (its dist_peakd.json), "
                          f"this run is {run_task!r}: its outputs are another task's; give a teacher of {run_task} "
                          "or run finetune-teacher")
    if has_trained_head(teacher) is False:
        raise ConfigError(f"option teacher_dir: {teacher} has no trained classification head (no classifier.* "
                          "weights): a pretrained backbone, not a fine-tuned teacher; run finetune-teacher or give "
                          "the fine-tuned teacher folder")
    if task is not None:
        check_teacher_labels(teacher, task, run_task)
    if not same_tokens:
        return
    teacher_tokens = tokenizer_fingerprint_of("teacher_dir", str(teacher))
    if teacher_tokens != backbone_tokens:
        raise ConfigError(tokenizer_refusal(f"the teacher {teacher}", backbone, teacher_tokens, backbone_tokens,
                                            read_model_type(teacher)))
    config = read_config(teacher)
    check_widths(opts, stage, f"the teacher {teacher}", config.get("hidden_size", config.get("dim")), backbone)


def check_teacher_labels(teacher: Path, task: Any, run_task: str) -> None:
    """The teacher's classes (its config's ``id2label``) match the task's: the same names, the same names in
    another order (matched by name when the cache is built), or generic ``LABEL_i`` names of the same count
    (taken by index); else refused naming both label sets (:func:`~dist_peakd.models.teacher_labels.match_labels`)."""
    from ..models import ModelConfigError
    from ..models.teacher_labels import match_labels, model_label_names

    config = read_config(teacher)
    id2label = config.get("id2label") if isinstance(config.get("id2label"), dict) else None
    outputs = len(id2label) if id2label else config.get("num_labels")
    if outputs is None:
        return
    names = task.id2label()
    try:
        match_labels(model_label_names(id2label, int(outputs)), [names[i] for i in range(task.num_labels)],
                     str(teacher), run_task)
    except ModelConfigError as e:
        raise ConfigError(f"option teacher_dir: {e}") from None


def check_widths(opts: Any, stage: str, holder: str, teacher_width: Any, backbone: str) -> None:
    """Patient-KD (``beta`` > 0) compares the teacher's [CLS] states with the student's, so a student stage
    refuses a teacher (or cache) of another width than the backbone the student is built from."""
    if stage not in STUDENT_STAGES or not teacher_width or float(getattr(opts, "beta", 0) or 0) <= 0:
        return
    from transformers import AutoConfig

    width = getattr(AutoConfig.from_pretrained(backbone), "hidden_size", None)
    if width is not None and int(width) != int(teacher_width):
        raise ConfigError(f"option teacher_dir: {holder} is {teacher_width} wide, the backbone {backbone} {width}: "
                          "Patient-KD (--beta) compares their [CLS] states, which needs the same width; give a "
                          "teacher and a backbone of one width (e.g. fine-tune the teacher from this backbone), or "
                          "pass --beta 0 to distil from the logits only, or give the student's checkpoint as --student_backbone "
                          "(its [CLS] states are then mapped to the teacher's width)")


def tokenizer_refusal(holder: str, backbone: str, theirs: str, ours: str, teacher_type: str | None = None) -> str:
    """Two different tokenizers: no cache rebuild can help, so say so (both folders named) and what to do."""
    kinds = (f" (a {teacher_type!r} teacher, a {_model_type(backbone)!r} backbone)"
             if teacher_type and teacher_type != _model_type(backbone) else "")
    return (f"option teacher_dir: {holder} and the backbone {backbone} use two different tokenizers{kinds} "
            f"(fingerprints {theirs[:12]} vs {ours[:12]}): the teacher cache holds the teacher's outputs by its token "
            "ids, the student built from the backbone reads the backbone's, so rebuilding the cache cannot match "
            "them; the student is built from --backbone and must share the teacher's tokenizer: give as --backbone "
            "the checkpoint the teacher was fine-tuned from (its family), or fine-tune a teacher from this backbone "
            "(leave --teacher_dir out), or keep both: the teacher's checkpoint as --backbone and this one as "
            "--student_backbone (a student from another checkpoint tokenizes the text itself)")


def check_cache_tokenizer(cache_dir: Path, backbone: str, backbone_tokens: str, opts: Any = None,
                          stage: str = "ptp") -> None:
    """Without a teacher folder: a teacher cache built with another tokenizer than the backbone's (or, for
    Patient-KD, of another width) is refused naming both (its teacher's folder as the manifest records it)."""
    try:
        manifest = json.loads((cache_dir / CACHE_MANIFEST).read_text())
    except (OSError, ValueError):
        return  # no cache (or a broken one): the stage's own cache check names it
    cached = manifest.get("tokenizer_fingerprint") if isinstance(manifest, dict) else None
    holder = f"the teacher cache {cache_dir} (teacher {manifest.get('teacher_dir')})"
    if cached and cached != backbone_tokens:
        raise ConfigError(tokenizer_refusal(holder, backbone, str(cached), backbone_tokens))
    if opts is not None:
        check_widths(opts, stage, holder, manifest.get("hidden_size"), backbone)


def check_ptp_encoder(opts: Any) -> None:
    """distill with ``use_ptp``: the PTP encoder exists, is an SPS student, has this run's k and variant."""
    from .cross_student import student_source
    from .student_kind import plain_summary, plain_tag

    ptp_dir = Path(opts.layout().ptp_encoder(opts.k, opts.variant, plain_tag(opts)))
    if not (ptp_dir / MODEL_CONFIG).is_file():
        raise ConfigError(f"option ptp_dir: no PTP encoder at {ptp_dir} (run `dist-peakd ptp` with the same "
                          "k/variant first, or pass --use_ptp=False)")
    _verified(ptp_dir, opts)
    _refuse(family_refusal("student", "ptp_dir", str(ptp_dir), read_model_type(ptp_dir)))
    from transformers import AutoConfig

    from ..models import SPSBertConfig, SPSFamilyConfig  # registered with AutoConfig: the depth as read

    try:
        config = AutoConfig.from_pretrained(str(ptp_dir))
    except Exception as e:  # a config the SPS code cannot read
        raise ConfigError(f"option ptp_dir: {ptp_dir / 'config.json'} is not a readable SPS config ({e})") from None
    sps = isinstance(config, SPSBertConfig | SPSFamilyConfig)
    k, variant = (config.num_hidden_layers, config.sps_variant) if sps else (None, None)
    family, wanted_family = getattr(config, "base_model_type", "bert"), _model_type(student_source(opts))
    if sps and family != wanted_family:
        raise ConfigError(f"option ptp_dir: encoder {ptp_dir} is a {family} SPS student; this run's backbone "
                          f"{student_source(opts)} is {wanted_family!r}: run `dist-peakd ptp` with this backbone first")
    if k != opts.k or variant != opts.variant:
        raise ConfigError(f"option ptp_dir: encoder {ptp_dir} has k={k}, variant={variant}; this run asks "
                          f"k={opts.k}, variant={opts.variant}")
    if plain_tag(opts):  # a plain student's encoder: built from the same backbone layers
        recorded = (_record(ptp_dir).get("student") or {}).get("backbone_layers")
        wanted = plain_summary(opts)["backbone_layers"]
        if recorded != wanted:
            raise ConfigError(f"option ptp_dir: encoder {ptp_dir} was built from backbone layers {recorded} (its "
                              f"dist_peakd.json), this plain student copies {wanted} (--layer_map {opts.layer_map})")
