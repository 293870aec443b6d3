"""The launch scripts in launchers/: syntax, --dry-run command lines, errors, and the real (exec) path
with stand-in `deepspeed`/`srun`/`ray`/`dist-peakd` programs that only report their arguments.

Convention under test: ``launchers/<script> [launcher flags] -- <stage> [stage options]``; the command
is printed as one shell-quoted line starting with "+ " (stdout with --dry-run, stderr otherwise).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
L = REPO / "launchers"
SCRIPTS = ["single_node.sh", "multi_node_hostfile.sh", "multi_node_no_ssh.sh", "slurm.sbatch", "ray_cluster.sh"]
# a stage option with a space and a quote must survive every hop unchanged
STAGE = ["distill", "--task", "rte", "--run_name", "it's a run", "--lr", "3e-5"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "MASTER_", "NODE_RANK", "NUM_GPUS", "NUM_NODES", "RAY_ADDRESS"))}
    return {**env, **extra}


def _run(script: str, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(L / script), *args], env=env or _env(), capture_output=True, text=True,
                          timeout=60)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _commands(out: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", [*SCRIPTS, "_lib.sh", "setup_env.sh", "test.sh"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(L / script)], capture_output=True).returncode == 0
    if script in SCRIPTS:
        text = (L / script).read_text()
        assert "set -euo pipefail" in text
        assert os.access(L / script, os.X_OK)
        help_ = _run(script, "--help").stdout
        assert "usage:" in help_ and "--dry-run" in help_


@pytest.mark.parametrize("script", ["single_node.sh", "multi_node_hostfile.sh", "multi_node_no_ssh.sh"])
def test_stage_must_follow_double_dash(script):
    proc = _run(script, "--dry-run", "distill", "--task", "rte", check=False)
    assert proc.returncode == 2 and "-- <stage>" in proc.stderr


def test_single_node_dry_run():
    proc = _run("single_node.sh", "--num_gpus", "2", "--master_port=29555", "--bind_cores_to_rank",
                "--dry-run", "--", *STAGE)
    [cmd] = _commands(proc.stdout)
    assert Path(cmd[0]).name == "deepspeed"
    assert cmd[1:] == ["--num_gpus", "2", "--master_port", "29555", "--bind_cores_to_rank",
                       "--module", "dist_peakd.cli", *STAGE]
    assert proc.stderr == ""
    bad = _run("single_node.sh", "--num_gpus", "0", "--dry-run", "--", "distill", check=False)
    assert bad.returncode == 2 and "--num_gpus" in bad.stderr


def test_multi_node_hostfile_dry_run(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# the cluster\nworker-1 slots=8\n\nworker-2 slots=8  # second\n")
    out = _run("multi_node_hostfile.sh", "--hostfile", str(hostfile), "--master_port", "29600", "--dry-run",
               "--", *STAGE).stdout
    [cmd] = _commands(out)
    assert cmd[1:] == ["--hostfile", str(hostfile), "--master_addr", "worker-1", "--master_port", "29600",
                       "--force_multi", "--module", "dist_peakd.cli", *STAGE]  # pdsh, even for one node
    assert "2 host(s): worker-1 worker-2" in out
    out = _run("multi_node_hostfile.sh", "--hostfile", str(hostfile), "--master_addr", "10.0.0.5", "--num_nodes",
               "1", "--num_gpus", "4", "--launcher", "openmpi", "--dry-run", "--", *STAGE).stdout
    [cmd] = _commands(out)
    assert cmd[1:9] == ["--hostfile", str(hostfile), "--master_addr", "10.0.0.5", "--master_port", "29500",
                        "--num_nodes", "1"]
    assert cmd[9:] == ["--num_gpus", "4", "--launcher", "openmpi", "--module", "dist_peakd.cli", *STAGE]
    missing = _run("multi_node_hostfile.sh", "--hostfile", str(tmp_path / "nope"), "--dry-run", "--", "distill",
                   check=False)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_multi_node_no_ssh_dry_run(tmp_path):
    env = _env(DIST_PEAKD_HOSTFILE_DIR=str(tmp_path / "hf"))
    out = _run("multi_node_no_ssh.sh", "--node_rank", "1", "--num_nodes", "2", "--num_gpus", "4", "--master_addr",
               "10.1.2.3", "--master_port", "29700", "--dry-run", "--", *STAGE, env=env).stdout
    [cmd] = _commands(out)
    hostfile = str(tmp_path / "hf" / "hostfile-n2-g4")
    assert cmd[1:] == ["--hostfile", hostfile, "--no_ssh", "--node_rank", "1", "--num_nodes", "2", "--num_gpus", "4",
                       "--master_addr", "10.1.2.3", "--master_port", "29700", "--module", "dist_peakd.cli", *STAGE]
    assert "node0 slots=4,node1 slots=4" in out and "global ranks 4..7 of 8" in out
    assert not (tmp_path / "hf").exists(), "--dry-run writes nothing"
    # environment defaults (what a job scheduler sets) and a given hostfile fixing the node count
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=2\nb slots=2\nc slots=2\n")
    out = _run("multi_node_no_ssh.sh", "--hostfile", str(hostfile), "--num_gpus", "2", "--dry-run", "--", *STAGE,
               env=_env(NODE_RANK="2", MASTER_ADDR="a", MASTER_PORT="29800")).stdout
    [cmd] = _commands(out)
    assert cmd[1:15] == ["--hostfile", str(hostfile), "--no_ssh", "--node_rank", "2", "--num_nodes", "3",
                         "--num_gpus", "2", "--master_addr", "a", "--master_port", "29800", "--module"]
    for args, message in ((["--node_rank", "2", "--num_nodes", "2", "--master_addr", "x"], "not below"),
                          (["--node_rank", "0", "--num_nodes", "2"], "--master_addr"),
                          (["--num_nodes", "2", "--master_addr", "x"], "--node_rank"),
                          (["--node_rank", "0", "--master_addr", "x"], "--num_nodes")):
        proc = _run("multi_node_no_ssh.sh", *args, "--dry-run", "--", "distill", env=env, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


SLURM = dict(SLURM_JOB_NODELIST="gpu[003-004,010],login1", SLURM_NNODES="3", SLURM_NODEID="1",
             SLURM_JOB_ID="1234", SLURM_GPUS_ON_NODE="8", SLURM_CPUS_PER_TASK="32")


def test_slurm_dry_run(tmp_path):
    env = _env(**SLURM, DIST_PEAKD_HOSTFILE_DIR=str(tmp_path))
    out = _run("slurm.sbatch", "--dry-run", "--", *STAGE, env=env).stdout
    cmds = _commands(out)
    assert len(cmds) == 1 + 3  # the srun line, then what each node's task runs
    srun = cmds[0]
    node_script = str(L / "multi_node_no_ssh.sh")
    assert srun == ["srun", "--nodes", "3", "--ntasks", "3", "--ntasks-per-node", "1", "--kill-on-bad-exit=1",
                    "--cpus-per-task", "32", "bash", "-c", 'exec "$0" --node_rank "$SLURM_NODEID" "$@"', node_script,
                    "--num_nodes", "3", "--num_gpus", "8", "--master_addr", "gpu003", "--master_port", "29734",
                    "--", *STAGE]
    for rank, cmd in enumerate(cmds[1:]):
        assert cmd[1:] == ["--hostfile", f"{tmp_path}/hostfile-n3-g8", "--no_ssh", "--node_rank", str(rank),
                           "--num_nodes", "3", "--num_gpus", "8", "--master_addr", "gpu003", "--master_port",
                           "29734", "--module", "dist_peakd.cli", *STAGE]
    assert "3 node(s) x 8 rank(s); rank 0 on gpu003:29734" in out
    # GPUs from SLURM_GPUS_PER_NODE ("type:count"), an explicit port, a plain node list
    env = _env(SLURM_JOB_NODELIST="n7,n8", SLURM_NNODES="2", SLURM_GPUS_PER_NODE="h100:4")
    srun = _commands(_run("slurm.sbatch", "--master_port", "29999", "--dry-run", "--", "distill", env=env).stdout)[0]
    i = srun.index("--num_nodes")
    assert srun[i:i + 8] == ["--num_nodes", "2", "--num_gpus", "4", "--master_addr", "n7", "--master_port", "29999"]
    outside = _run("slurm.sbatch", "--dry-run", "--", "distill", env=_env(), check=False)
    assert outside.returncode == 2 and "SLURM_JOB_NODELIST" in outside.stderr


def test_ray_cluster_dry_run():
    head = _run("ray_cluster.sh", "head", "--port", "6390", "--num_cpus", "2", "--node_ip_address", "10.0.0.9",
                "--dry-run").stdout
    [cmd] = _commands(head)
    assert Path(cmd[0]).name == "ray"
    assert cmd[1:] == ["start", "--head", "--port", "6390", "--disable-usage-stats", "--num-cpus", "2",
                       "--node-ip-address", "10.0.0.9"]
    assert "worker --address 10.0.0.9:6390" in head
    [cmd] = _commands(_run("ray_cluster.sh", "worker", "--address", "10.0.0.9:6390", "--num_gpus=1",
                           "--dry-run").stdout)
    assert cmd[1:] == ["start", "--address", "10.0.0.9:6390", "--disable-usage-stats", "--num-gpus", "1"]
    sweep = ["--task", "rte", "--num_samples", "4", "--space", '{"alpha": [0.5, 0.9]}']
    for after in (["sweep", *sweep], sweep):  # the stage name after `--` is optional
        [cmd] = _commands(_run("ray_cluster.sh", "submit", "--address", "10.0.0.9:6390", "--dry-run", "--",
                               *after).stdout)
        assert Path(cmd[0]).name == "dist-peakd"
        assert cmd[1:] == ["sweep", "--address", "10.0.0.9:6390", *sweep]
    [cmd] = _commands(_run("ray_cluster.sh", "stop", "--dry-run").stdout)
    assert cmd[1:] == ["stop"]
    for args, message in ((["submit", "--dry-run"], "--address"), (["worker", "--dry-run"], "--address"),
                          (["launch"], "unknown subcommand"), (["submit", "--address", "x:1", "--bogus"], "--bogus")):
        proc = _run("ray_cluster.sh", *args, check=False, env=_env())
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


# ------------------------------------------------------------------ the real path, with stand-in tools
REPORTER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["REPORT"], "a") as f:
    f.write(json.dumps({"tool": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                        "node": os.environ.get("SLURM_NODEID")}) + "\\n")
"""
# stand-in srun: skip its own options, run the task command once per node with SLURM_NODEID set
FAKE_SRUN = """#!/usr/bin/env python3
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
"""


@pytest.fixture()
def fake_tools(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("deepspeed", REPORTER), ("ray", REPORTER), ("dist-peakd", REPORTER), ("srun", FAKE_SRUN)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    report = tmp_path / "report.jsonl"
    env = _env(PATH=f"{bindir}:{os.environ['PATH']}", REPORT=str(report),
               DIST_PEAKD_HOSTFILE_DIR=str(tmp_path / "hf"))

    def calls() -> list[dict]:
        return [json.loads(x) for x in report.read_text().splitlines()] if report.exists() else []

    return env, calls


def test_scripts_run_what_they_print(fake_tools):
    env, calls = fake_tools
    proc = _run("single_node.sh", "--num_gpus", "2", "--", *STAGE, env=env)
    [printed] = _commands(proc.stderr)
    assert calls()[-1]["argv"] == printed[1:] == ["--num_gpus", "2", "--master_port", "29500", "--module",
                                                  "dist_peakd.cli", *STAGE]
    proc = _run("ray_cluster.sh", "submit", "--address", "h:1", "--", "sweep", "--task", "rte", env=env)
    assert calls()[-1] == {"tool": "dist-peakd", "argv": ["sweep", "--address", "h:1", "--task", "rte"], "node": None}
    _run("ray_cluster.sh", "head", "--port", "6391", env=env)
    assert calls()[-1]["argv"] == ["start", "--head", "--port", "6391", "--disable-usage-stats"]


def test_slurm_job_starts_one_launcher_per_node(fake_tools, tmp_path):
    """The srun line survives its second shell: every node runs the no-ssh launcher with its own rank."""
    env, calls = fake_tools
    env = {**env, **SLURM}
    _run("slurm.sbatch", "--", *STAGE, env=env)
    runs = calls()
    assert [c["node"] for c in runs] == ["0", "1", "2"]
    hostfile = tmp_path / "hf" / "hostfile-n3-g8"
    for rank, call in enumerate(runs):
        assert call["tool"] == "deepspeed"
        assert call["argv"] == ["--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(rank), "--num_nodes", "3",
                                "--num_gpus", "8", "--master_addr", "gpu003", "--master_port", "29734", "--module",
                                "dist_peakd.cli", *STAGE]
    assert hostfile.read_text().split("\n")[:3] == ["node0 slots=8", "node1 slots=8", "node2 slots=8"]
