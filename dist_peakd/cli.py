"""The ``dist-peakd`` command line (fire): one sub-command per stage.

Every stage takes the same shared options (see ``dist_peakd.config.RunOptions``) plus its own, from the
command line and/or a YAML/JSON file given with ``--config``; the command line wins. Run it directly
(one process), or under ``deepspeed``/``torchrun``: ``deepspeed --num_gpus 2 -m dist_peakd.cli <stage> ...``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from collections.abc import Callable
from typing import Any

from .config import build_options
from .engine.ds_config import ConfigError


def _stage_command(name: str, options_cls: type, runner: Callable[[Any], Any], doc: str) -> Callable[..., Any]:
    """A fire-friendly function whose signature lists every option of ``options_cls`` with its default."""

    def command(config: str | None = None, **kwargs: Any) -> None:
        try:
            opts = build_options(options_cls, config, **kwargs)
        except ConfigError as e:
            print(f"dist-peakd {name}: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        result = runner(opts)
        if result is not None and _is_main_process():
            printable = {k: v for k, v in result.items() if k != "history"} if isinstance(result, dict) else result
            print(json.dumps(printable, indent=2, default=str))

    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None")]
    lines = [doc.strip(), "", "Options (defaults):", "  --config=None  YAML/JSON file holding any of the options below"]
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=f.type))
        lines.append(f"  --{f.name}={default!r}")
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = name.replace("-", "_")
    command.__doc__ = "\n".join(lines)
    return command


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# (CLI name, module under dist_peakd.stages, options class, one-line description)
STAGES: list[tuple[str, str, str, str]] = [
    ("finetune-teacher", "finetune_teacher", "FinetuneTeacherOptions",
     "Fine-tune the teacher on a GLUE task; exports best/ and final/ in HF format."),
    ("cache-teacher", "cache_teacher", "CacheTeacherOptions",
     "Run the fine-tuned teacher once over train and dev; store logits + per-layer [CLS] states."),
    ("ptp", "ptp", "PTPOptions",
     "Pretrain the SPS student on teacher-prediction (PTP) labels from the cache."),
    ("distill", "distill", "DistillOptions",
     "Distil the SPS student from the teacher cache with KD + Patient-KD."),
    ("pipeline", "pipeline", "PipelineOptions",
     "Teacher fine-tune -> cache -> PTP -> distill -> evaluate; skips stages whose output exists."),
]


def stage_commands() -> dict[str, Callable[..., Any]]:
    """Map of CLI stage name -> command (each stage module is imported here, its run() on call)."""
    import importlib
    import importlib.util

    commands: dict[str, Callable[..., Any]] = {}
    for cli_name, module_name, options_name, doc in STAGES:
        full = f"dist_peakd.stages.{module_name}"
        if importlib.util.find_spec(full) is None:  # stage not written yet
            continue
        module = importlib.import_module(full)
        commands[cli_name] = _stage_command(cli_name, getattr(module, options_name), module.run, doc)
    return commands


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dist-peakd`` console script and of ``python -m dist_peakd.cli``."""
    import fire

    argv = sys.argv[1:] if argv is None else argv
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK is in the environment anyway.
    argv = [a for a in argv if not a.startswith("--local_rank")]
    fire.Fire(stage_commands(), command=argv, name="dist-peakd")


if __name__ == "__main__":
    main()
