"""Stage options reach every rank byte for byte through every launch script, whatever they hold:
``$(...)``, backticks, quotes, spaces, globs, ``%`` sequences, backslashes, newlines, an empty value.

The hard path is ``multi_node_hostfile.sh`` with pdsh: DeepSpeed's runner builds one command line,
pdsh substitutes ``%h %u %n %%`` in it and each node's login shell parses it. Here the real
``deepspeed`` runner runs with a stand-in ``pdsh`` that does what pdsh does (the substitution of
pdsh's ``pipecmd_format_arg``, the words joined with spaces as ssh joins them) and hands the line to
a real shell, ``bash -c`` for node 0 and ``sh -c`` (dash here) for node 1. What the shell then starts
(``python -m deepspeed.launcher.launch``) is a stand-in package in the working folder that records its
argv, so the assertion is on what a node's launcher would receive.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
L = REPO / "launchers"
VENV_BIN = Path(sys.executable).parent

HOSTILE = ["distill", "--task", "rte", "--run_name", "it's a run", "--output_dir", "/tmp/$(touch PWNED1)",
           "--note", "`touch PWNED2`", "--glob", "*", "--glob2", "[ab]?*.py", "--home", "~", "--opt=~/x",
           "--pct", "%n %h %u %% %", "--pct2", "%n", "--bs", "back\\slash \\", "--dq", 'say "hi" \\" end',
           "--ops", "a;b && c | d > e # f ! {g,h}", "--nl", "two\nlines", "--tab", "a\tb", "--empty", "",
           "--space", " ", "--apos", "'", "--var", "$HOME ${HOME}", "--ansi", "$'x'", "--utf8", "ünïcødé ✓",
           "--lr", "3e-5"]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "MASTER_", "NODE_RANK", "NUM_GPUS", "NUM_NODES", "RAY_ADDRESS", "PDSH"))}
    return {**env, "PATH": f"{tmp / 'bin'}:{VENV_BIN}:{os.environ['PATH']}", "REPORT": str(tmp / "report.jsonl"),
            "DIST_PEAKD_HOSTFILE_DIR": str(tmp / "hf"), "DS_ACCELERATOR": "cpu", **extra}


def _run(script: str, *args: str, env: dict[str, str], cwd: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(L / script), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _reports(tmp: Path) -> list[dict]:
    path = tmp / "report.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _printed(text: str, prefix: str = "+ ") -> list[str]:
    """The words of the one printed line starting with ``prefix`` (a quoted newline continues it)."""
    lines = text.splitlines()
    [start] = [i for i, x in enumerate(lines) if x.startswith(prefix)]
    for end in range(start + 1, len(lines) + 1):
        try:
            return shlex.split("\n".join(lines[start:end])[len(prefix):])
        except ValueError:  # inside a quoted newline: take the next line too
            continue
    raise AssertionError(f"unbalanced quotes in the printed line:\n{text}")


def _no_injection(*dirs: Path) -> None:
    for d in dirs:
        assert not list(d.glob("PWNED*")), f"a command in an option value ran in {d}"


# ------------------------------------------------------------------------------- stand-in programs
FAKE_PDSH = r'''#!/usr/bin/env python3
"""pdsh -S -f N -w h1,h2 [launcher args] <remote words>: per host, %-substitute every word like
pdsh's pipecmd_format_arg, join them with spaces like ssh and run the line in a login-shell stand-in."""
import os, subprocess, sys
args = sys.argv[1:]
hosts = []
while args and args[0].startswith("-"):
    flag = args.pop(0)
    if flag in ("-f", "-w"):
        value = args.pop(0)
        if flag == "-w":
            hosts = value.split(",")

def fmt(word, host, rank):
    out, i = "", 0
    while i < len(word):
        if word[i] == "%" and i + 1 < len(word):
            out += {"h": host, "u": os.environ.get("USER", "u"), "n": str(rank), "%": "%"}.get(word[i + 1],
                                                                                            word[i:i + 2])
            i += 2
        else:
            out += word[i]
            i += 1
    return out

rc = 0
for rank, host in enumerate(hosts):
    line = " ".join(fmt(w, host, rank) for w in args)
    shell = ["bash", "-c"] if rank % 2 == 0 else ["sh", "-c"]
    rc = max(rc, subprocess.run([*shell, line], env=dict(os.environ, FAKE_NODE=host, FAKE_SHELL=shell[0])).returncode)
sys.exit(rc)
'''
FAKE_SSH = "#!/bin/sh\nexit 0\n"  # the runner's `ssh host hostname` reachability check
FAKE_LAUNCH = r'''import json, os, sys
with open(os.environ["REPORT"], "a") as f:
    f.write(json.dumps({"tool": "launch", "argv": sys.argv[1:], "node": os.environ.get("FAKE_NODE"),
                        "shell": os.environ.get("FAKE_SHELL"), "cwd": os.getcwd()}) + "\n")
'''
REPORTER = r'''#!/usr/bin/env python3
import json, os, sys
with open(os.environ["REPORT"], "a") as f:
    f.write(json.dumps({"tool": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                        "node": os.environ.get("SLURM_NODEID")}) + "\n")
'''
FAKE_SRUN = r'''#!/usr/bin/env python3
import os, subprocess, sys
args, n = sys.argv[1:], 1
while args[0].startswith("-"):
    flag = args.pop(0)
    if flag == "--nodes":
        n = int(args[0])
    if "=" not in flag:
        args.pop(0)
for node in range(n):
    subprocess.run(args, env=dict(os.environ, SLURM_NODEID=str(node)), check=True)
'''


def _tools(tmp: Path, *names: str) -> None:
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    texts = {"pdsh": FAKE_PDSH, "ssh": FAKE_SSH, "srun": FAKE_SRUN, "deepspeed": REPORTER, "ray": REPORTER,
             "dist-peakd": REPORTER}
    for name in names:
        (bindir / name).write_text(texts[name])
        (bindir / name).chmod(0o755)


@pytest.fixture()
def work(tmp_path) -> Path:
    """A working folder holding a stand-in ``deepspeed.launcher.launch`` (first on the remote PYTHONPATH)."""
    pkg = tmp_path / "work" / "deepspeed" / "launcher"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "launch.py").write_text(FAKE_LAUNCH)
    return tmp_path / "work"


# ----------------------------------------------------------------------------------------- tests
def test_pdsh_words_survive_deepspeeds_quoting_pdsh_and_posix_shells():
    """The encoding alone, against DeepSpeed's own PDSHRunner.parse_user_args, then bash and dash."""
    from deepspeed.launcher.multinode_runner import PDSHRunner

    words = subprocess.run(["bash", "-c", f'source {L / "_lib.sh"}; for a in "$@"; do pdsh_word "$a"; printf "\\0"; '
                            "done", "_", *HOSTILE], capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
    assert words[:3] == ["distill", "--task", "rte"] and "3e-5" in words  # plain words stay readable
    runner_words = PDSHRunner.parse_user_args(SimpleNamespace(args=SimpleNamespace(user_args=words)))
    line = " ".join(w.replace("%%", "%") for w in runner_words)  # what pdsh makes of a doubled %
    for shell in ("bash", "sh", "dash"):
        if shutil.which(shell):
            got = subprocess.run([shell, "-c", 'printf "%s\\0" ' + line], capture_output=True, text=True)
            assert got.stdout.split("\0")[:-1] == HOSTILE, (shell, got.stderr)


def test_hostfile_launcher_through_the_real_runner_and_pdsh(tmp_path, work):
    _tools(tmp_path, "pdsh", "ssh")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    proc = _run("multi_node_hostfile.sh", "--hostfile", str(hostfile), "--master_port", "29612", "--", *HOSTILE,
                env=_env(tmp_path), cwd=work)
    calls = [c for c in _reports(tmp_path) if c["tool"] == "launch"]
    assert [(c["node"], c["shell"]) for c in calls] == [("node-a", "bash"), ("node-b", "sh")], proc.stderr
    for rank, call in enumerate(calls):
        argv = call["argv"]
        assert f"--node_rank={rank}" in argv and "--master_addr=node-a" in argv and "--master_port=29612" in argv
        assert "--module" in argv and argv[argv.index("dist_peakd.cli"):] == ["dist_peakd.cli", *HOSTILE]
        assert call["cwd"] == str(work)
    _no_injection(work, tmp_path)
    # the printed command is the one that ran; the note line gives the options as each rank gets them
    printed = _printed(proc.stderr)
    assert printed[printed.index("--module") - 1] == "--force_multi"
    note = _printed(proc.stderr, "# stage options (each rank receives exactly these; quoted below for the remote "
                                 "shell): ")
    assert note == HOSTILE


def test_hostfile_launcher_one_node_takes_the_same_path(tmp_path, work):
    """--num_nodes 1 would make DeepSpeed start the node locally (no shell); --force_multi keeps one rule."""
    _tools(tmp_path, "pdsh", "ssh")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    _run("multi_node_hostfile.sh", "--hostfile", str(hostfile), "--num_nodes", "1", "--", *HOSTILE,
         env=_env(tmp_path), cwd=work)
    [call] = [c for c in _reports(tmp_path) if c["tool"] == "launch"]
    assert call["node"] == "node-a"
    assert call["argv"][call["argv"].index("dist_peakd.cli"):] == ["dist_peakd.cli", *HOSTILE]
    _no_injection(work, tmp_path)


def test_hostfile_launcher_other_launchers_get_the_options_as_given(tmp_path):
    _tools(tmp_path, "deepspeed")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    for flags in (["--launcher", "openmpi"], ["--launcher=slurm"], ["--no_ssh", "--node_rank", "0"]):
        out = _run("multi_node_hostfile.sh", "--hostfile", str(hostfile), *flags, "--dry-run", "--", *HOSTILE,
                   env=_env(tmp_path)).stdout
        printed = _printed(out)
        assert "--force_multi" not in printed
        assert printed[printed.index("--module") + 1:] == ["dist_peakd.cli", *HOSTILE], flags
    _run("multi_node_hostfile.sh", "--hostfile", str(hostfile), "--launcher", "openmpi", "--", *HOSTILE,
         env=_env(tmp_path))
    [call] = _reports(tmp_path)
    assert call["argv"][call["argv"].index("--module") + 1:] == ["dist_peakd.cli", *HOSTILE]


def test_hostfile_launcher_refuses_what_deepspeed_would_put_unquoted(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\n")
    odd = tmp_path / "my runs $(x)"
    odd.mkdir()
    proc = _run("multi_node_hostfile.sh", "--hostfile", str(hostfile), "--dry-run", "--", "distill",
                env=_env(tmp_path), cwd=odd, check=False)
    assert proc.returncode == 2 and f"the current folder '{odd}' holds characters" in proc.stderr
    proc = _run("multi_node_hostfile.sh", "--hostfile", str(hostfile), "--master_addr", "a;b", "--dry-run", "--",
                "distill", env=_env(tmp_path), check=False)
    assert proc.returncode == 2 and "--master_addr 'a;b' is not a host name" in proc.stderr


def test_every_other_launcher_hands_the_options_over_untouched(tmp_path):
    """single_node, no-ssh, SLURM (its srun line crosses `bash -c` on every node) and Ray submit."""
    _tools(tmp_path, "deepspeed", "ray", "dist-peakd", "srun")
    env = _env(tmp_path)
    _run("single_node.sh", "--num_gpus", "2", "--", *HOSTILE, env=env, cwd=tmp_path)
    _run("multi_node_no_ssh.sh", "--node_rank", "0", "--num_nodes", "1", "--master_addr", "h", "--", *HOSTILE,
         env=env, cwd=tmp_path)
    _run("slurm.sbatch", "--", *HOSTILE, env={**env, "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NNODES": "2"},
         cwd=tmp_path)
    _run("ray_cluster.sh", "submit", "--address", "h:1", "--", "sweep", *HOSTILE[1:], env=env, cwd=tmp_path)
    calls = _reports(tmp_path)
    assert [c["tool"] for c in calls] == ["deepspeed"] * 4 + ["dist-peakd"]
    for call in calls[:4]:
        assert call["argv"][call["argv"].index("--module") + 1:] == ["dist_peakd.cli", *HOSTILE]
    assert [c["node"] for c in calls[2:4]] == ["0", "1"]
    assert calls[4]["argv"] == ["sweep", "--address", "h:1", *HOSTILE[1:]]
    _no_injection(tmp_path)
    # and each --dry-run line parses back to what was run
    for script, args in (("single_node.sh", ["--num_gpus", "2"]),
                         ("multi_node_no_ssh.sh", ["--node_rank", "0", "--num_nodes", "1", "--master_addr", "h"])):
        printed = _printed(_run(script, *args, "--dry-run", "--", *HOSTILE, env=env).stdout)
        assert printed[printed.index("--module") + 1:] == ["dist_peakd.cli", *HOSTILE]
