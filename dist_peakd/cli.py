"""The ``dist-peakd`` command line (fire): one sub-command per stage.

Each stage takes the option sections it reads (``dist_peakd.config``: the training stages
``RunOptions``; cache-teacher, evaluate, predict and export fewer) plus its own, from the command line
and/or a YAML/JSON file given with ``--config``; the command line wins. An option of another stage is
refused naming the stage and the stages it belongs to. Run it directly
(one process), or under ``deepspeed``/``torchrun``: ``deepspeed --num_gpus 2 -m dist_peakd.cli <stage> ...``;
``launchers/`` has the single-node, multi-node, SLURM and Ray recipes.

``main`` checks the arguments before fire sees them: ``--help``/``-h`` print our own help (every option
with its default), and an unknown option, a short flag or a stray word is refused with exit status 2
*before* any work starts (fire alone would run the stage first and complain about leftovers after).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import shutil
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from .config import OPTION_GROUPS, SECTIONS, build_options, option_meta
from .env import default_ds_accelerator
from .errors import ConfigError, UsageError
from .schema import declaring_class, validate_values

#: ``--config`` is the one option that is not a field of an options class (it fills them).
CONFIG_HELP = "YAML/JSON file holding any of these options (the command line wins)"


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _type_name(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _option_line(name: str, default: Any, type_name: str = "", help_: str = "") -> str:
    head = f"  --{name}={default!r}"
    return f"{head:<36} {type_name:<12} {help_}".rstrip()


def _field_line(cls: type, f: dataclasses.Field) -> str:
    """``--name=default  type  help`` of one option (its help from the field that declared it); options
    that do not change a result are marked (a stage folder made with other values of them is reused)."""
    meta = option_meta(cls, f.name)
    help_ = meta["help"] + ("" if meta["result"] else " [not result-relevant]")
    return _option_line(f.name, _default_of(f), _type_name(f), help_)


def coerce_values(options_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The command line's option values typed and checked by their fields (:func:`dist_peakd.schema.validate_values`).

    :func:`main` hands fire every value as the text that was typed (:func:`as_text_values`), so this is
    the same typing path as a YAML/JSON ``--config`` file's: ``--use_ptp false`` is False, ``--run_name
    1e5`` stays the text ``1e5``, ``--k 2.5`` is refused naming the option.
    """
    return validate_values(options_cls, values, "the command line")


def _stage_command(name: str, options_cls: type, runner: Callable[[Any], Any], doc: str) -> Callable[..., Any]:
    """A fire-friendly function whose signature lists every option of ``options_cls`` with its default."""

    def command(config: str | None = None, **kwargs: Any) -> None:
        default_ds_accelerator()  # before anything imports deepspeed (option checks do): no accelerator guess
        try:
            from .env import check_accelerator

            check_accelerator()  # before anything imports DeepSpeed
            if config is not None and not isinstance(config, str):
                raise ConfigError(f"option config: expected a file name, got {config!r}")
            opts = build_options(options_cls, config, _command=name, _owners=option_owners(),
                                 **coerce_values(options_cls, kwargs))
        except ConfigError as e:
            print(f"dist-peakd {name}: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        from . import console
        from .guard import run_guarded  # failures -> one-line message + documented exit code
        from .outcome import SELF_REPORTING, banner_detail
        from .stages.depth import with_k_resolved  # the banner names the folder the stage writes

        if name not in SELF_REPORTING:
            console.banner(name, banner_detail(name, run_guarded(name, with_k_resolved, opts)))
        result = run_guarded(name, runner, opts)
        if result is not None:
            from .outcome import outcome_lines  # one short summary; the details are in the JSON it names

            for line in outcome_lines(name, result):
                console.echo(line)  # rank 0

    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None")]
    for f in dataclasses.fields(options_cls):
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_default_of(f),
                                        annotation=f.type))
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = name.replace("-", "_")
    command.__doc__ = stage_help(name, options_cls, doc)
    return command


# (CLI name, module under dist_peakd.stages, options class, one-line description)
STAGES: list[tuple[str, str, str, str]] = [
    ("finetune-teacher", "finetune_teacher", "FinetuneTeacherOptions",
     "Fine-tune the teacher on a GLUE task or your own data; exports best/ and final/ in HF format."),
    ("cache-teacher", "cache_teacher", "CacheTeacherOptions",
     "Run the fine-tuned teacher once over train and dev; store logits + per-layer [CLS] states."),
    ("ptp", "ptp", "PTPOptions",
     "Pretrain the SPS student on teacher-prediction (PTP) labels from the cache."),
    ("distill", "distill", "DistillOptions",
     "Distil the SPS student from the teacher cache with KD + Patient-KD."),
    ("pipeline", "pipeline", "PipelineOptions",
     "Teacher fine-tune -> cache -> PTP -> distill -> evaluate; skips stages whose output exists."),
    ("sweep", "sweep", "SweepOptions",
     "Ray Tune sweep of distillation trials (temperature, alpha, depth, ...) sharing one teacher cache."),
    ("compress", "compress", "CompressOptions",
     "Search students (SPS/plain x T x alpha, fp32/int8 ONNX) for a latency/size budget: Pareto front + chosen."),
    ("evaluate", "evaluate", "EvaluateOptions",
     "Dev metrics of a model folder (PyTorch or ONNX), as the stage that wrote it scored it; JSON."),
    ("predict", "predict", "PredictOptions",
     "Label names + probabilities per row of a split or a file (TSV/JSONL); GLUE test: the submission file."),
    ("export", "export", "ExportOptions",
     "A model folder as compact HF (custom code), plain BERT (no custom code) or ONNX (+ int8), verified."),
]


def _stage_modules() -> list[tuple[str, Any, type, str]]:
    """(CLI name, module, options class, description) of every stage whose module exists."""
    import importlib
    import importlib.util

    found = []
    for cli_name, module_name, options_name, doc in STAGES:
        full = f"dist_peakd.stages.{module_name}"
        if importlib.util.find_spec(full) is None:  # stage not written yet
            continue
        module = importlib.import_module(full)
        found.append((cli_name, module, getattr(module, options_name), doc))
    return found


def stage_options() -> dict[str, type]:
    """Map of CLI stage name -> its options dataclass."""
    return {name: cls for name, _, cls, _ in _stage_modules()}


def option_owners() -> dict[str, list[str]]:
    """Option name -> the stages that take it (in :data:`STAGES` order)."""
    owners: dict[str, list[str]] = {}
    for name, cls in stage_options().items():
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(name)
    return owners


def not_an_option_of(stage: str, name: str, owners: dict[str, list[str]]) -> str:
    """The refusal of an option ``stage`` does not take but other stages do."""
    return f"option --{name}: not an option of {stage!r} (it belongs to: {', '.join(owners[name])})"


def stage_commands() -> dict[str, Callable[..., Any]]:
    """Map of CLI stage name -> command (each stage module is imported here, its run() on call)."""
    return {name: _stage_command(name, cls, module.run, doc) for name, module, cls, doc in _stage_modules()}


# ---------------------------------------------------------------------------------------------- help
_CONFIG_NOTE = ("Options come from --config FILE (a YAML/JSON mapping of option names to values) and the\n"
                "command line, which wins; --name value or --name=value; booleans also --name / --noname.\n"
                "The resolved options are saved with the outputs (stage_options.json in each stage folder); a stage\n"
                "folder made with other values of the result-relevant ones is refused, not reused.")


def _grouped_lines(cls: type, fields: list[dataclasses.Field]) -> tuple[list[str], list[str]]:
    """The option lines of ``fields``: the general ones, then a section per group (:data:`OPTION_GROUPS`)."""
    general = [f for f in fields if option_meta(cls, f.name)["group"] is None]
    lines = [_field_line(cls, f) for f in general]
    sections: list[str] = []
    for group, heading in OPTION_GROUPS.items():
        members = [f for f in fields if option_meta(cls, f.name)["group"] == group]
        if members:
            sections += ["", f"{heading}:", *(_field_line(cls, f) for f in members)]
    return lines, sections


def stage_help(name: str, options_cls: type, doc: str) -> str:
    """Help of one stage: every option with its default (the stage's own defaults), type and meaning;
    the grouped ones (data options ...) in their own sections."""
    fields = dataclasses.fields(options_cls)
    shared = {f.name for f in fields if declaring_class(options_cls, f.name) in SECTIONS}
    general, sections = _grouped_lines(options_cls, [f for f in fields if f.name in shared])
    lines = [f"usage: dist-peakd {name} [--config FILE] [--option value ...]", "", doc.strip(), "",
             "Options (--name=default):", _option_line("config", None, "str | None", CONFIG_HELP), *general,
             *sections]
    own = [f for f in fields if f.name not in shared]
    if own:
        lines += ["", f"{name} options:"]
        lines += [_field_line(options_cls, f) for f in own]
    lines += ["", _CONFIG_NOTE]
    return wrap_help("\n".join(lines))


def main_help() -> str:
    """Help of ``dist-peakd``: the stages, the shared options with defaults, each stage's own options."""
    from .config import RunOptions

    modules = _stage_modules()
    shared_fields = dataclasses.fields(RunOptions)
    shared = {f.name: _default_of(f) for f in shared_fields}
    width = max(len(n) for n, *_ in modules) + 2
    lines = ["usage: dist-peakd <stage> [--config FILE] [--option value ...]",
             "       dist-peakd <stage> --help      (every option of a stage with its default)",
             "       dist-peakd --version", "",
             "Pea-KD distillation of BERT classifiers; every stage runs in a DeepSpeed engine.", "",
             "Stages:"]
    lines += [f"  {name:<{width}}{doc}" for name, _, _, doc in modules]
    missing = [n for n, *_ in STAGES if n not in {m[0] for m in modules}]
    if missing:
        lines.append(f"  (not available in this installation: {', '.join(missing)})")
    lines += ["", _tasks_line()]
    general, sections = _grouped_lines(RunOptions, list(shared_fields))
    lines += ["", "Options of the training stages (finetune-teacher, ptp, distill; pipeline, sweep and compress run "
              "them) (--name=default):", _option_line("config", None, "str | None", CONFIG_HELP), *general, *sections]
    lines += ["", "Stage options (--name=default), the shared defaults a stage changes, and which of the options "
              "above a stage takes when not all (any other is refused, naming the stage):"]
    for name, _, cls, _ in modules:
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        own = [f"--{f.name}={_default_of(f)!r}" for f in fields if f.name not in shared]
        changed = [f"--{f.name}={_default_of(f)!r}" for f in fields
                   if f.name in shared and _default_of(f) != shared[f.name]]
        text = " ".join(own) or "(none)"
        if changed:
            text += "; defaults: " + " ".join(changed)
        if not set(shared) <= names:
            text += "; of the options above only: " + " ".join(f"--{f.name}" for f in shared_fields if f.name in names)
        lines.append(f"  {name}: {text}")
    lines += ["", _CONFIG_NOTE,
              "Several ranks or nodes: launchers/single_node.sh, multi_node_hostfile.sh, multi_node_no_ssh.sh,",
              "slurm.sbatch, ray_cluster.sh (README, 'Scaling out')."]
    return wrap_help("\n".join(lines))


def _tasks_line() -> str:
    """Every task ``--task`` accepts, from the task registry."""
    from .data.tasks import TASKS

    return "Tasks (--task NAME, any case; '-' and '_' ignored): " + ", ".join(TASKS)


#: The option and type columns of an option line (``_option_line``).
_HEAD_WIDTH, _TYPE_WIDTH = 36, 12


def help_width() -> int:
    """The terminal's width (``COLUMNS`` when set), at least 60; 100 when it cannot be told."""
    return max(60, shutil.get_terminal_size((100, 24)).columns)


def wrap_help(text: str, width: int | None = None) -> str:
    """Wrap every line of a help text to ``width`` (default :func:`help_width`).

    An option line keeps its help in the help column (continuations indented to it; on a narrow
    terminal the help goes under the option); other lines continue 4 spaces deeper than they start.
    """
    width = width or help_width()
    out: list[str] = []
    for line in text.splitlines():
        column = _help_column(line)
        if len(line) <= width:
            out.append(line)
        elif column is not None:
            out += _wrap_option(line, column, width)
        else:
            indent = " " * (len(line) - len(line.lstrip()) + 4)
            out += textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False,
                                 break_on_hyphens=False)
    return "\n".join(out)


def _help_column(line: str) -> int | None:
    """Where the help text of an option line starts (None: not an option line, or no help)."""
    if not line.startswith("  --") or " " not in line[4:]:
        return None
    column = max(_HEAD_WIDTH, line.index(" ", 4)) + 1 + _TYPE_WIDTH + 1
    return column if len(line) > column and line[column - 1] == " " and line[:column].strip() else None


def _wrap_option(line: str, column: int, width: int) -> list[str]:
    head, help_ = line[:column].rstrip(), line[column:].strip()
    if width - column >= 30:
        body = textwrap.wrap(help_, width - column, break_long_words=False, break_on_hyphens=False)
        return [f"{head:<{column}}{body[0]}", *(" " * column + b for b in body[1:])]
    return [head, *textwrap.wrap(help_, width, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                 break_long_words=False, break_on_hyphens=False)]


# ------------------------------------------------------------------------------------ argument check
def _is_flag(arg: str) -> bool:
    """fire's notion of a flag: ``--x`` or ``-x...`` (a negative number is a value)."""
    return arg.startswith("--") or re.match(r"^-[a-zA-Z]", arg) is not None


def check_args(stage: str, args: list[str], options_cls: type, owners: dict[str, list[str]] | None = None) -> None:
    """Refuse (``UsageError``) what fire would not map onto an option of ``options_cls``.

    Mirrors fire's parsing: ``--name value``, ``--name=value``, a bare ``--flag`` before another flag or
    at the end (True), ``--noflag`` (False), hyphens and underscores alike; a bare ``--`` ends the check
    (fire's own flags follow it). Short flags are refused: fire would bind ``-x`` to whichever option
    happens to start with x in *this* stage. An option of other stages (``owners``: option -> stages) is
    refused in one line naming this stage and those.
    """
    owners = owners or {}
    valid = ["config", *(f.name for f in dataclasses.fields(options_cls))]

    def refuse(message: str) -> None:
        listing = " ".join(f"--{v}" for v in valid)
        raise UsageError(f"{message}\nvalid options of {stage}: {listing}\n(see dist-peakd {stage} --help)")

    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return
        if not _is_flag(arg):
            refuse(f"unexpected argument {arg!r}: options are given as --name value")
        if not arg.startswith("--"):
            refuse(f"short option {arg!r} is not supported: spell the option out (--name value)")
        key, eq, _ = arg[2:].partition("=")
        key = key.replace("-", "_")
        bool_syntax = not eq and (i + 1 == len(args) or _is_flag(args[i + 1]))
        if key not in valid and not (bool_syntax and key.startswith("no") and key[2:] in valid):
            other = key if key in owners else key[2:] if bool_syntax and key.startswith("no") and key[2:] in owners \
                else None
            if other is not None:
                raise UsageError(not_an_option_of(stage, other, owners))
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            refuse(f"unknown option --{key}{hint}")
        i += 1 if (eq or bool_syntax) else 2


def as_text_values(args: list[str]) -> list[str]:
    """``args`` with every option value written as a Python string literal, so that fire passes the typed
    text through unchanged (its own guessing would turn ``1e5`` into a float and ``[1]`` into a list);
    the options' types decide (:func:`coerce_values`). Bare flags (``--flag``, ``--noflag``) stay as
    they are. Mirrors :func:`check_args`' parsing (which has accepted ``args`` already)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return out + args[i:]
        key, eq, value = arg.partition("=")
        if eq:
            out.append(f"{key}={value!r}")
        elif i + 1 == len(args) or _is_flag(args[i + 1]):
            out.append(arg)
        else:
            out += [arg, repr(args[i + 1])]
            i += 1
        i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dist-peakd`` console script and of ``python -m dist_peakd.cli``."""
    import fire

    argv = sys.argv[1:] if argv is None else list(argv)
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK is in the environment anyway.
    argv = [a for a in argv if not a.startswith("--local_rank")]
    if not argv or argv[0] in ("-h", "--help") or argv == ["help"]:
        from .console import print_to_pipe

        print_to_pipe(main_help())
        return
    if argv[0] in ("--version", "-V", "version"):
        from . import __version__

        print(f"dist-peakd {__version__}")
        return
    if argv[0] == "help":  # `dist-peakd help <stage>`
        argv = [argv[1], "--help"]
    stage = argv[0].replace("_", "-")
    from .stages.cards import set_command  # recorded in every model card

    set_command(argv)
    commands = stage_commands()
    if stage not in commands:
        known = [name for name, *_ in STAGES]
        why = "is not available in this installation" if stage in known else "is not a stage"
        print(f"dist-peakd: error: {argv[0]!r} {why}; stages: {', '.join(commands)}\n(see dist-peakd --help)",
              file=sys.stderr)
        raise SystemExit(2)
    options_cls = stage_options()[stage]
    rest = argv[1:]
    ours = rest[:rest.index("--")] if "--" in rest else rest
    if "--help" in ours or "-h" in ours:
        print(commands[stage].__doc__)
        return
    try:
        check_args(stage, rest, options_cls, option_owners())
    except UsageError as e:
        print(f"dist-peakd {stage}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    fire.Fire(commands, command=[stage, *as_text_values(rest)], name="dist-peakd")


if __name__ == "__main__":
    main()
