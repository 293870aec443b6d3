"""Two "nodes" on this machine: two no-ssh DeepSpeed launchers (node_rank 0 and 1, one CPU rank each,
gloo) run a short distillation that must equal a single-node 2-rank run of the same seed.

Both runs go through the repo's launch scripts, read their options from one YAML file plus command-line
overrides, and share one teacher + teacher cache, as a cluster would on shared storage (each run has a
cold tokenization cache that its ranks race to fill). A third run puts each node in its own network
namespace (veth link, no shared loopback); it is skipped where ``ip netns`` needs privileges this user
lacks. The last test documents a collision between two jobs that share a stage folder (fails until fixed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.launcher, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
N_TRAIN, N_DEV, MAXLEN = 48, 24, 40
STAGE = "distill-2node"
TIMEOUT = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}", DS_ACCELERATOR="cpu",
                OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                DIST_PEAKD_COLLECTIVE_TIMEOUT="300", DIST_PEAKD_HOSTFILE_DIR=str(tmp / "hostfiles"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_bert_nodropout, glue_dir) -> dict[str, Path]:
    """The shared-storage prerequisites, built in-process: a tiny teacher, its cache, a YAML config."""
    import yaml
    from transformers import AutoTokenizer

    from dist_peakd.models import load_teacher
    from dist_peakd.stages import cache_teacher

    root = tmp_path_factory.mktemp("multinode")
    teacher = root / "pre" / "mrpc" / "teacher" / "best"
    torch.manual_seed(0)
    load_teacher(tiny_bert_nodropout, 2).save_pretrained(str(teacher))
    AutoTokenizer.from_pretrained(str(tiny_bert_nodropout)).save_pretrained(str(teacher))
    common = dict(task="mrpc", glue_dir=str(glue_dir), max_length=MAXLEN, max_train_examples=N_TRAIN,
                  max_eval_examples=N_DEV, cache_dir=str(root / "tok"))
    summary = cache_teacher.run(cache_teacher.CacheTeacherOptions(
        output_dir=str(root / "pre"), teacher_dir=str(teacher), cache_batch_size=16, **common))
    config = {**common, "backbone": str(tiny_bert_nodropout), "k": 2, "use_ptp": False,
              "teacher_dir": str(teacher), "teacher_cache_dir": summary["cache_dir"], "batch_size": 8,
              "eval_batch_size": 16, "epochs": 1.0, "log_every_steps": 1, "lr": 1e-3, "warmup_ratio": 0.0,
              "seed": 7, "run_name": STAGE,
              "keep_checkpoints_after_success": True}  # the tests read the world size DeepSpeed recorded there
    (root / "distill.yaml").write_text(yaml.safe_dump(config))
    return {"root": root, "config": root / "distill.yaml"}


def _stage_args(shared: dict[str, Path], out: Path) -> list[str]:
    # The YAML holds everything; the command line adds output_dir and overrides lr (1e-3 -> 5e-4) and
    # cache_dir: a cold tokenization cache per run, so both ranks race to fill it.
    return ["distill", "--config", str(shared["config"]), "--output_dir", str(out), "--lr", "5e-4",
            "--cache_dir", str(out / "tok")]


def _node_cmd(shared: dict[str, Path], out: Path, rank: int, port: int, master_addr: str) -> list[str]:
    return [str(REPO / "launchers" / "multi_node_no_ssh.sh"), "--node_rank", str(rank), "--num_nodes", "2",
            "--num_gpus", "1", "--master_addr", master_addr, "--master_port", str(port), "--",
            *_stage_args(shared, out)]


def _make_netns() -> tuple[list[str], list[str]] | str:
    """Two network namespaces joined by a veth pair; (names, addresses), or why that is impossible."""
    if shutil.which("ip") is None:
        return "no `ip` command"
    tag = os.getpid() % 100000
    names, subnet = [f"dpk{tag}a", f"dpk{tag}b"], f"10.231.{os.getpid() % 250}"
    steps = [["netns", "add", names[0]], ["netns", "add", names[1]],
             ["link", "add", names[0], "type", "veth", "peer", "name", names[1]]]
    for i, ns in enumerate(names):  # each end of the veth is named like its namespace
        steps += [["link", "set", ns, "netns", ns], ["-n", ns, "addr", "add", f"{subnet}.{i + 1}/24", "dev", ns],
                  ["-n", ns, "link", "set", ns, "up"], ["-n", ns, "link", "set", "lo", "up"]]
    for step in steps:
        proc = subprocess.run(["ip", *step], capture_output=True, text=True)
        if proc.returncode != 0:
            _drop_netns(names)
            return f"`ip {' '.join(step)}` failed (needs CAP_NET_ADMIN/CAP_SYS_ADMIN): {proc.stderr.strip()}"
    return names, [f"{subnet}.1", f"{subnet}.2"]


def _drop_netns(names: list[str]) -> None:
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def runs(shared) -> dict[str, object]:
    """Start every job at once (2 cores: they mostly wait on imports), then wait for all of them.

    ``single``: single_node.sh --num_gpus 2; ``two_nodes``: two multi_node_no_ssh.sh launchers over
    127.0.0.1; ``netns``: the same with each node in its own network namespace (or the skip reason).
    """
    root = shared["root"]
    jobs: dict[str, list[tuple[list[str], dict[str, str]]]] = {
        "single": [([str(REPO / "launchers" / "single_node.sh"), "--num_gpus", "2", "--master_port",
                     str(_free_port()), "--", *_stage_args(shared, root / "single")], {})],
        "two_nodes": [],
    }
    port = _free_port()
    for rank in (1, 0):
        jobs["two_nodes"].append((_node_cmd(shared, root / "two_nodes", rank, port, "127.0.0.1"), {}))
    netns = _make_netns()
    if isinstance(netns, tuple):
        names, addrs = netns
        port = _free_port()
        jobs["netns"] = [(["ip", "netns", "exec", names[rank], *_node_cmd(shared, root / "netns", rank, port, addrs[0])],
                          {"GLOO_SOCKET_IFNAME": names[rank]}) for rank in (1, 0)]
    procs = {name: [subprocess.Popen(cmd, env={**_env(root), **extra}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True) for cmd, extra in job]
             for name, job in jobs.items()}
    logs: dict[str, list[str]] = {}
    try:
        for name, plist in procs.items():
            logs[name] = [p.communicate(timeout=TIMEOUT)[0] for p in plist]
    finally:
        for plist in procs.values():
            for p in plist:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if isinstance(netns, tuple):
            _drop_netns(netns[0])
    for name, plist in procs.items():
        for p, log in zip(plist, logs[name], strict=True):
            assert p.returncode == 0, f"{name}: {p.args[-20:]} failed (rc {p.returncode}):\n{log[-4000:]}"
    result: dict[str, object] = {name: (root / name / "mrpc" / STAGE, logs[name][::-1] if name != "single"
                                        else logs[name][0]) for name in procs}  # node logs in rank order
    if not isinstance(netns, tuple):
        result["netns"] = netns
    return result


@pytest.fixture(scope="module")
def single_node(runs) -> tuple[Path, str]:
    return runs["single"]


@pytest.fixture(scope="module")
def two_nodes(runs) -> tuple[Path, list[str]]:
    return runs["two_nodes"]


def _losses(stage_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (stage_dir / "train_log.jsonl").read_text().splitlines()]


def _world_size_of_checkpoint(stage_dir: Path) -> tuple[int, list[str]]:
    """(dp world size DeepSpeed recorded, per-rank RNG files) of the stage's final checkpoint."""
    root = stage_dir / "checkpoints"
    tag = (root / "latest").read_text().strip()
    states = torch.load(root / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return int(states["dp_world_size"]), sorted(p.name for p in (root / tag).glob("rng_rank*.pt"))


def _assert_same_run(a: Path, b: Path) -> None:
    la, lb = _losses(a), _losses(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, N_TRAIN // 8 + 1))
    for ra, rb in zip(la, lb, strict=True):
        for key in ("train/loss", "train/kd", "train/ce", "train/pt", "train/lr", "train/grad_norm"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (key, ra["step"])
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["final"].keys() == sb["final"].keys() and {"accuracy", "f1"} <= sa["final"].keys()
    for key, value in sa["final"].items():
        assert value == pytest.approx(sb["final"][key], abs=1e-9), key


def test_two_node_run_equals_single_node_run(single_node, two_nodes):
    single_dir, single_log = single_node
    multi_dir, (log0, log1) = two_nodes
    # each launcher saw a two-node world and started its one rank with the right global rank
    for node, log in ((0, log0), (1, log1)):
        assert f"nnodes=2, num_local_procs=1, node_rank={node}" in log
        assert "dist_world_size=2" in log
        assert f"--node_rank {node} --num_nodes 2 --num_gpus 1" in log  # the script printed its command
    # both ranks took part: DeepSpeed recorded a data-parallel world of 2, each rank wrote its RNG state
    assert _world_size_of_checkpoint(multi_dir) == (2, ["rng_rank0.pt", "rng_rank1.pt"])
    assert _world_size_of_checkpoint(single_dir) == (2, ["rng_rank0.pt", "rng_rank1.pt"])
    _assert_same_run(single_dir, multi_dir)
    assert "--num_gpus 2" in single_log


def test_resolved_config_is_saved_with_the_command_line_winning(two_nodes, shared):
    import yaml

    multi_dir, _ = two_nodes
    saved = json.loads((multi_dir / "stage_options.json").read_text())
    from_yaml = yaml.safe_load(shared["config"].read_text())
    assert saved["lr"] == 5e-4 and from_yaml["lr"] == 1e-3  # the command line won
    assert saved["output_dir"] == str(shared["root"] / "two_nodes")
    assert saved["cache_dir"] == str(shared["root"] / "two_nodes" / "tok")
    for key, value in from_yaml.items():
        if key not in ("lr", "cache_dir"):
            assert saved[key] == value, key
    from dist_peakd.stages.distill import DistillOptions

    assert set(saved) == {f.name for f in dataclasses.fields(DistillOptions)}  # ClassVars are no options


def test_two_node_outputs_are_complete_and_written_once(two_nodes):
    """Shared output folder: one summary/config/log/export, one TensorBoard writer process, one
    tokenization cache entry (both ranks raced to build it), no temporary leftovers."""
    multi_dir, _ = two_nodes
    names = {p.name for p in multi_dir.iterdir()}
    assert {"best", "checkpoints", "stage_options.json", "final", "summary.json", "train_log.jsonl"} <= names
    assert "config.json" not in names  # the stage options are not confused with a model config
    assert not [n for n in names if n.startswith(".")], names  # no temp / set-aside folders
    events = list(multi_dir.glob("events.out.tfevents*"))  # scalars + hparams in the stage folder, rank 0 only
    assert events and len({p.name.split(".")[-2] for p in events}) == 1, events
    tok = multi_dir.parents[1] / "tok"
    assert len(list(tok.iterdir())) == 1, list(tok.iterdir())
    leftovers = [p for p in multi_dir.parents[1].rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    assert (multi_dir / "final" / "config.json").is_file() and (multi_dir / "best" / "config.json").is_file()


# ------------------------------------------------------------------------- stretch: network namespaces
def test_two_nodes_in_separate_network_namespaces(runs, single_node):
    """Each node in its own network namespace, joined by a veth link: no shared loopback."""
    if isinstance(runs["netns"], str):
        pytest.skip(runs["netns"])
    stage_dir, logs = runs["netns"]
    assert "dist_world_size=2" in logs[1] and "--master_addr 10.231." in logs[1]
    assert _world_size_of_checkpoint(stage_dir) == (2, ["rng_rank0.pt", "rng_rank1.pt"])
    _assert_same_run(single_node[0], stage_dir)


# ------------------------------------------------------------- shared storage: two jobs, one stage folder
def test_second_run_with_other_options_does_not_reuse_the_stage_folder(shared, tmp_path):
    """KNOWN COLLISION (fails until fixed in the stages/loop): two jobs that share an output_dir and a
    stage folder name (distill's name has k/variant/alpha/T/beta/seed, not lr, epochs, data slice, ...)
    collide. The second silently "resumes" the first one's finished checkpoint: it trains nothing,
    re-exports the first job's model and overwrites stage_options.json with its own options, so the folder
    claims lr=5e-4 for a model trained with lr=1e-3. Expected: refuse, naming the differing option
    (as the pipeline does for reused stages), or start fresh."""
    import yaml

    from dist_peakd.config import build_options
    from dist_peakd.engine import ConfigError
    from dist_peakd.stages import distill

    config = {**yaml.safe_load(shared["config"].read_text()), "output_dir": str(tmp_path), "log_every_steps": 3}
    first = distill.run(build_options(distill.DistillOptions, **config))
    stage_dir = Path(first["stage_dir"])
    assert json.loads((stage_dir / "stage_options.json").read_text())["lr"] == 1e-3
    with pytest.raises(ConfigError, match="lr"):
        distill.run(build_options(distill.DistillOptions, **{**config, "lr": 5e-4}))
