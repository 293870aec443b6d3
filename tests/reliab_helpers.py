"""Shared pieces of the issue-14 reliability tests: tiny stage options, CLI calls (in process and as a
real process), a fine-tuned tiny teacher with its cache, byte surgery on files."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def slice_opts(out: Path, backbone: Path | str, glue_dir: Path, **kw) -> dict:
    """Options of a tiny MRPC run (24 train / 16 dev rows, max length 40): a few seconds per stage."""
    base = dict(task="mrpc", output_dir=str(out), glue_dir=str(glue_dir), backbone=str(backbone), max_length=40,
                max_train_examples=24, max_eval_examples=16, batch_size=8, epochs=1, eval_batch_size=16,
                log_every_steps=1, lr=1e-3, seed=3, cache_dir=str(Path(out).parent / "tok"))
    base.update(kw)
    return base


def stage_argv(argv: list[str]) -> list[str]:
    """``dist-peakd <stage> --name value ...`` less the options of *other* stages (``--name=value`` or ``--name
    value``): one run's options serve all of its stages, and a stage refuses another stage's options (issue
    26). Unknown names stay, for the CLI to refuse."""
    from dist_peakd import cli as cli_mod

    stage = str(argv[0]).replace("_", "-") if argv else ""
    classes = cli_mod.stage_options()
    if stage not in classes:
        return argv
    mine = {f.name for f in dataclasses.fields(classes[stage])}
    others = set(cli_mod.option_owners()) - mine
    out, i = [str(a) for a in argv[:1]], 1
    while i < len(argv):
        arg = str(argv[i])
        key = arg[2:].partition("=")[0].replace("-", "_") if arg.startswith("--") else None
        separate = key is not None and "=" not in arg and i + 1 < len(argv) and not str(argv[i + 1]).startswith("--")
        if key in others:
            i += 2 if separate else 1
            continue
        out.append(argv[i])
        i += 1
    return out


def for_stage(stage: str, opts: dict) -> dict:
    """``opts`` less the options ``stage`` does not take: one run's options serve all of its stages, and a
    stage refuses another stage's options (issue 26)."""
    from dist_peakd import cli as cli_mod

    names = {"config", *(f.name for f in dataclasses.fields(cli_mod.stage_options()[stage]))}
    return {k: v for k, v in opts.items() if k in names}


def args_of(opts: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in opts.items()]


def run_cli(argv: list[str], capsys=None) -> tuple[int, str, str]:
    """``dist-peakd <argv>`` in this process: (exit code, stdout, stderr; both empty without ``capsys``)."""
    from dist_peakd import cli as cli_mod

    if capsys is not None:
        capsys.readouterr()
    try:
        cli_mod.main(stage_argv(argv))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli(stage: str, opts: dict, capsys=None) -> tuple[int, str]:
    """``dist-peakd <stage>`` in this process: (exit code, stderr when ``capsys`` is given)."""
    code, _, err = run_cli([stage, *args_of(opts)], capsys)
    return code, err


def run_process(args: list[str], env: dict | None = None, timeout: float = 300, wait: bool = True):
    """``python -m dist_peakd.cli <args>`` as a real process (stdout+stderr together)."""
    # not the in-process tests' process group: a child would try to bind this process's MASTER_PORT
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    full_env = dict(inherited, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                    HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "dist_peakd.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=REPO)
    return subprocess.run(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, cwd=REPO)


def copy_run(teacher_run, tmp_path: Path) -> tuple[Path, dict]:
    """A private copy of the shared teacher run (``tmp_path/run``) and its options pointing at it."""
    src, opts = teacher_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    return out, dict(opts, output_dir=str(out))


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) - 1 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_bert, glue_dir):
    """A fine-tuned tiny teacher and its teacher cache (in process): ``(output_dir, options)``."""
    from dist_peakd.config import build_options
    from dist_peakd.stages import cache_teacher, finetune_teacher

    out = tmp_path_factory.mktemp("reliab_teacher") / "run"
    opts = slice_opts(out, tiny_bert, glue_dir)
    finetune_teacher.run(build_options(finetune_teacher.FinetuneTeacherOptions, **opts))
    cache_teacher.run(build_options(cache_teacher.CacheTeacherOptions, **for_stage("cache-teacher", opts)))
    return out, opts
