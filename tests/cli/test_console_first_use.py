"""Issue 27, item 7 (console and first use): what a new user's commands print, and where they write.

* DeepSpeed's accelerator guess ("Setting accelerator to CPU ...") is never printed: the accelerator is
  named before DeepSpeed is imported, unless the user named one (then it is left exactly as it is);
* ``export`` prints its banner and one outcome line, none of the libraries' warnings;
* ``pipeline`` prints each stage's end line (``distill done: f1 ... (final, step ...); best f1 ...``),
  and ``reused`` for a stage that finished earlier;
* a standalone ``distill``/``ptp`` with ``--k auto`` names the folder it writes in its banner;
* every path the README's examples write is outside the repository or ignored by git.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from reliab_helpers import args_of, stage_argv

REPO = Path(__file__).resolve().parents[2]
DS_GUESS = "Setting accelerator to CPU"
END_LINE = re.compile(r"^\[dist-peakd\] (?P<stage>[\w-]+) (?P<how>done|reused): .+ \(final, step \d+/\d+\); best .+ at step "
                      r"\d+(?P<baseline>; baseline .+)?$")


def _cli(stage: str, opts: dict) -> tuple[int, list[str]]:
    """``dist-peakd <stage>`` in this process: (exit code, stdout + stderr lines without progress bars)."""
    from dist_peakd import cli as cli_mod

    buf = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            cli_mod.main(stage_argv([stage, *args_of(opts)]))
        except SystemExit as e:
            code = int(e.code or 0)
    lines = [line.strip() for line in buf.getvalue().replace("\r", "\n").splitlines()]
    return code, [line for line in lines if line and "%|" not in line and "it/s" not in line]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory, tiny_bert, glue_dir):
    """``dist-peakd pipeline`` (in process) on a tiny slice with ``--k auto``, run twice: (options, first
    run's lines, rerun's lines)."""
    out = tmp_path_factory.mktemp("first_use") / "run"
    opts = dict(task="mrpc", output_dir=str(out), glue_dir=str(glue_dir), backbone=str(tiny_bert), max_length=40,
                max_train_examples=24, max_eval_examples=16, batch_size=8, eval_batch_size=16, epochs=1,
                teacher_epochs=1, ptp_epochs=1, lr=1e-3, teacher_lr=1e-3, ptp_lr=1e-3, seed=3, latency_repeats=1,
                cache_dir=str(out.parent / "tok"))
    code, first = _cli("pipeline", opts)
    assert code == 0, first
    code, again = _cli("pipeline", opts)
    assert code == 0, again
    return opts, first, again


def _after(lines: list[str], banner: str) -> list[str]:
    """The lines after the banner that starts with ``banner`` up to the next banner."""
    start = next(i for i, line in enumerate(lines) if line.startswith(banner))
    rest = lines[start + 1:]
    stop = next((i for i, line in enumerate(rest) if re.match(r"^\[\d+/\d+\] ", line) or line.startswith("## ")),
                len(rest))
    return rest[:stop]


@pytest.mark.parametrize("run", ["first", "rerun"])
def test_pipeline_prints_each_stage_end_line(tiny_pipeline, run):
    opts, first, again = tiny_pipeline
    lines = first if run == "first" else again
    how = "done" if run == "first" else "reused"
    task_dir = Path(opts["output_dir"]) / "mrpc"
    for banner, stage, folder in (("[1/4] finetune-teacher:", "finetune-teacher", "teacher"),
                                  ("[3/4] ptp:", "ptp", "ptp-k1-shuffle"),
                                  ("[4/4] distill:", "distill", "distill-k1-shuffle-ptp-a0.7-T10-b100-s3")):
        section = _after(lines, banner)
        ends = [m for m in map(END_LINE.match, section) if m]
        assert [(m["stage"], m["how"]) for m in ends] == [(stage, how)], section
        # the trivial baseline of the 16 dev rows (10 "equivalent": always 1 -> F1 20/26); no teacher for the teacher
        want = {"finetune-teacher": "; baseline f1 0.7692 (majority: equivalent)", "ptp": None,
                "distill": "; baseline f1 0.7692 (majority: equivalent); keeps "}[stage]
        got = ends[0]["baseline"]
        assert got == want if stage != "distill" else got.startswith(want) or got.startswith(
            "; baseline f1 0.7692 (majority: equivalent); the teacher does not beat the baseline"), section
        assert f"[dist-peakd] summary: {task_dir / folder / 'summary.json'}" in section, section
        if run == "rerun":  # and why: the folder finished earlier with the same options and inputs
            assert f"[dist-peakd] {task_dir / folder} finished earlier with the same options and inputs: reused" \
                in section, section
    cache = _after(lines, "[2/4] cache-teacher:")
    word = "built" if run == "first" else "reused (valid, matching)"
    assert any(line.startswith(f"[dist-peakd] cache-teacher {word}: 40 rows (train 24, dev 16)") for line in cache), cache
    assert f"[dist-peakd] cache: {task_dir / 'teacher_cache'}" in cache


def test_distill_k_auto_banner_names_the_folder_it_writes(tiny_pipeline):
    opts, _, _ = tiny_pipeline
    task_dir = Path(opts["output_dir"]) / "mrpc"
    stage_opts = {k: v for k, v in opts.items() if k not in ("teacher_epochs", "ptp_epochs", "teacher_lr", "ptp_lr",
                                                            "latency_repeats")}
    code, lines = _cli("distill", dict(stage_opts, seed=4))  # a new folder: trains
    assert code == 0, lines
    folder = task_dir / "distill-k1-shuffle-ptp-a0.7-T10-b100-s4"
    assert lines[0] == f"[1/1] distill: mrpc -> {folder}", lines
    assert (folder / "summary.json").is_file()
    assert "[dist-peakd] --k auto: k=1 (ceil(L/4) of the 4-layer teacher" in "\n".join(lines)
    code, lines = _cli("ptp", dict(stage_opts, epochs=1, lr=1e-3))  # the pipeline's PTP encoder: reused
    assert code == 0, lines
    assert lines[0] == f"[1/1] ptp: mrpc -> {task_dir / 'ptp-k1-shuffle'}", lines
    assert not [p.name for p in task_dir.iterdir() if "kauto" in p.name]


def _child_env(**extra: str) -> dict[str, str]:
    """This environment without DS_ACCELERATOR (conftest sets it) and without this process's group."""
    drop = {"DS_ACCELERATOR", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), **extra)
    return env


_EXPORTS = """
import sys
from dist_peakd import cli
model, out, glue, tok = sys.argv[1:5]
common = ["--glue_dir", glue, "--cache_dir", tok]
for fmt, extra in (("onnx", ["--quantize", "int8"]), ("hf", []), ("plain", [])):
    cli.main(["export", "--model_dir", model, "--format", fmt, "--out", f"{out}/{fmt}", *extra, *common])
print("---", flush=True)
print("---", file=sys.stderr, flush=True)
cli.main(["evaluate", "--model_dir", f"{out}/onnx", "--onnx_file", "model_int8.onnx", "--max_eval_examples", "16",
          *common])
"""


@pytest.mark.slow  # a fresh process, three exports (ONNX + int8 among them) and an evaluate: ~25 s
def test_export_prints_one_line_and_no_accelerator_guess(tiny_pipeline, tmp_path):
    """Three exports and an ONNX evaluate in a fresh process without DS_ACCELERATOR: each export prints
    its banner and its outcome line, nothing else (no torch.onnx / onnxruntime / DeepSpeed warnings)."""
    opts, _, _ = tiny_pipeline
    model = Path(opts["output_dir"]) / "mrpc" / "distill-k1-shuffle-ptp-a0.7-T10-b100-s3" / "final"
    proc = subprocess.run([sys.executable, "-c", _EXPORTS, str(model), str(tmp_path), opts["glue_dir"],
                           str(tmp_path / "tok")], env=_child_env(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert DS_GUESS not in proc.stdout + proc.stderr
    exports, evaluate = proc.stdout.split("---\n")
    lines = exports.splitlines()
    assert len(lines) == 6 and proc.stderr.split("---\n")[0] == "", (lines, proc.stderr)
    for (banner, outcome), fmt in zip(zip(lines[::2], lines[1::2], strict=True), ("onnx", "hf", "plain"),
                                      strict=True):
        assert banner.startswith("[1/1] export: ") and banner.endswith(f"-> {tmp_path / fmt} ({fmt}"
                                                                      + (", int8)" if fmt == "onnx" else ")"))
        assert outcome.startswith(f"[dist-peakd] export done: {fmt} -> {tmp_path / fmt} ("), outcome
    assert "(int8 " in lines[1] and "verified on 64 dev rows" in lines[1]
    assert "[dist-peakd] evaluate done: f1 " in evaluate


def test_accelerator_is_named_only_when_the_user_did_not(monkeypatch):
    import torch

    from dist_peakd import env

    monkeypatch.setenv("DS_ACCELERATOR", "xpu")  # the user's value: kept as it is, and theirs
    assert env.default_ds_accelerator() == "xpu" and os.environ["DS_ACCELERATOR"] == "xpu"
    assert env.set_by_user("DS_ACCELERATOR")
    monkeypatch.delenv("DS_ACCELERATOR")
    monkeypatch.setattr(env, "_DEFAULTED", {})
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert env.default_ds_accelerator() == want and os.environ["DS_ACCELERATOR"] == want
    assert not env.set_by_user("DS_ACCELERATOR")  # this machine's default: never forwarded to a cluster's workers


def test_a_defaulted_accelerator_is_not_forwarded_to_a_cluster(monkeypatch):
    """Joining a Ray cluster forwards the user's DS_ACCELERATOR to the trials, not one this (driver)
    machine defaulted from its own hardware (a CPU head must not make GPU workers run on CPU)."""
    import ray

    from dist_peakd import env
    from dist_peakd.sweep import cluster

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setattr(env, "_DEFAULTED", {"DS_ACCELERATOR": "cpu"})
    cluster.init_ray("10.0.0.1:6379")
    assert "DS_ACCELERATOR" not in ((calls[-1].get("runtime_env") or {}).get("env_vars") or {})
    monkeypatch.setattr(env, "_DEFAULTED", {})  # the same value, set by the user
    cluster.init_ray("10.0.0.1:6379")
    assert calls[-1]["runtime_env"]["env_vars"]["DS_ACCELERATOR"] == "cpu"


def test_help_and_version_print_no_accelerator_guess():
    proc = subprocess.run([sys.executable, "-c", "from dist_peakd import cli; cli.main(['--version']); "
                           "cli.main(['distill', '--help'])"], env=_child_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("dist-peakd ") and "usage: dist-peakd distill" in proc.stdout
    assert DS_GUESS not in proc.stdout + proc.stderr and proc.stderr == ""


# ------------------------------------------------------------------------- README paths vs .gitignore
#: Options whose value is a path a command writes (files or folders).
WRITE_OPTIONS = ("--out", "--output_dir", "--out_json", "--out_md", "--work_dir", "--teacher_cache_dir", "--cache_dir")


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|python)?\n(.*?)^```", text, flags=re.S | re.M)


def written_paths(text: str) -> list[str]:
    """The paths the README's example commands write: write options' values, ``> file`` redirections,
    ``open(..., "w")`` in Python snippets (f-string fields as ``x``), and the default ``--output_dir``
    of every ``dist-peakd`` stage command that gives none."""
    from dist_peakd.config import RunOptions

    found: list[str] = []
    for block in _code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            code = line.split(" #", 1)[0]
            found += re.findall(r"""open\(f?["']([^"']+)["'],\s*["'][wa]""", code)
            try:
                words = shlex.split(code, comments=True)
            except ValueError:  # a Python line with an odd quote: not a shell command
                continue
            for i, word in enumerate(words):
                key, eq, value = word.partition("=")
                if key in WRITE_OPTIONS:
                    found.append(value if eq else (words[i + 1] if i + 1 < len(words) else ""))
                elif word in (">", ">>") and i + 1 < len(words):
                    found.append(words[i + 1])
            stage = re.search(r"(?:dist-peakd|dist_peakd\.cli)\s+(?!--|export|evaluate|predict)([a-z-]+)", code)
            if stage and "--output_dir" not in code and stage[1] not in ("help",):
                found.append(RunOptions().output_dir)
    return [re.sub(r"\{[^}]*\}", "x", p) for p in found if p and not p.startswith(("$", "/dev/", "<"))]


def test_readme_examples_write_outside_the_repo_or_ignored_paths():
    if subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("not a git checkout")  # e.g. the wheel's clean venv: nothing to keep out of a repository
    readme = (REPO / "README.md").read_text()
    paths = written_paths(readme)
    assert {"runs", "ship/onnx", "eval.json", "preds/sst2_test.tsv", "reviews_pred.jsonl", "sst2_x.jsonl"} <= set(paths)
    inside = []
    for p in paths:
        full = (REPO / p).resolve()
        if full == REPO or REPO not in full.parents:
            continue  # absolute or ../: outside the repository
        inside.append(full.relative_to(REPO).as_posix())
    # predict also writes the GLUE submission file beside --out (README: preds/MRPC.tsv)
    inside += [str(Path(p).parent / "MRPC.tsv") for p in inside if p.endswith("_test.tsv")]
    # a folder (--output_dir, an export's --out) is covered when what it holds is ignored
    probes = [q for p in inside for q in (p, f"{p}/probe")]
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin", "-v", "-n"], cwd=REPO,
                          input="\n".join(probes) + "\n", capture_output=True, text=True)
    ignored = {line.split("\t")[-1] for line in proc.stdout.splitlines() if not line.startswith("::")}
    not_ignored = sorted({p for p in inside if p not in ignored and f"{p}/probe" not in ignored})
    assert not not_ignored, f"README examples write these paths inside the repository, not in .gitignore: {not_ignored}"


def test_library_warnings_off_keeps_errors_and_restores_levels(capsys):
    """What ``export`` runs under: warnings and library WARNING logs gone, ERROR logs still printed,
    every level and filter as it was afterwards."""
    import logging
    import warnings

    from dist_peakd import console

    handler = logging.StreamHandler()  # stderr, as torch's and onnxruntime's handlers
    lib = logging.getLogger("onnxruntime.quantization")
    lib.addHandler(handler)
    before = {name: logging.getLogger(name).level for name in console.LIBRARY_LOGGERS}
    try:
        with console.library_warnings_off():
            warnings.warn("axis name batch will not be used", UserWarning, stacklevel=1)
            lib.warning("Please consider to run pre-processing before quantization")
            lib.error("the graph could not be quantized")
        err = capsys.readouterr().err
        assert "pre-processing" not in err and "axis name" not in err
        assert "the graph could not be quantized" in err
        assert {name: logging.getLogger(name).level for name in console.LIBRARY_LOGGERS} == before
        with pytest.warns(UserWarning, match="after"):
            warnings.warn("after", UserWarning, stacklevel=1)
    finally:
        lib.removeHandler(handler)
