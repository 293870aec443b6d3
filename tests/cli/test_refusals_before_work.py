"""Issue 27, item 4 (run part): refusals before any work, in one line, exit 2, nothing left on disk.

``--output_dir`` that is a file, ``DS_ACCELERATOR`` that DeepSpeed does not know, a sweep's ``--space``
values outside the options' bounds, and ``sweep --address`` where nothing listens.
"""

from __future__ import annotations

import socket

import pytest
from reliab_helpers import run_cli, run_process

from dist_peakd.env import DS_ACCELERATORS


def _run(args: list[str], capsys) -> tuple[int, str]:
    code, out, err = run_cli(args, capsys)
    return code, err + out


def _one_line_refusal(code: int, text: str, *needles: str) -> None:
    assert code == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if ": error: " in line]
    assert len(errors) == 1, text[-3000:]
    for needle in needles:
        assert needle in errors[0], text[-3000:]


def _free_port() -> int:
    """A local port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ output_dir is a file
@pytest.mark.parametrize("below", ["", "/runs"])
def test_an_output_dir_that_is_a_file_is_refused_in_one_line(below, tmp_path, tiny_bert, glue_dir, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("the user's file\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, text = _run(["finetune-teacher", "--output_dir", f"{taken}{below}", "--glue_dir", str(glue_dir),
                       "--backbone", str(tiny_bert), "--cache_dir", str(tmp_path / "tok")], capsys)
    what = "is a file" if not below else f"is below {str(taken)!r}, a file"
    _one_line_refusal(code, text, f"option output_dir: {str(taken) + below!r} {what}: expected a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert taken.read_text() == "the user's file\n"


# ------------------------------------------------------------------------------------ DS_ACCELERATOR
def test_the_accepted_accelerators_are_deepspeeds():
    from deepspeed.accelerator.real_accelerator import SUPPORTED_ACCELERATOR_LIST

    assert list(DS_ACCELERATORS) == list(SUPPORTED_ACCELERATOR_LIST)


def test_an_unknown_ds_accelerator_is_refused_before_deepspeed_loads(tmp_path, tiny_bert):
    """A fresh process: DeepSpeed's own check would be a traceback at its first import (exit 1)."""
    out = tmp_path / "out"
    proc = run_process(["finetune-teacher", "--output_dir", str(out), "--backbone", str(tiny_bert)],
                       env={"DS_ACCELERATOR": "tpu"})
    _one_line_refusal(proc.returncode, proc.stdout, "environment variable DS_ACCELERATOR='tpu': expected one of "
                      + ", ".join(DS_ACCELERATORS))
    assert not out.exists()


# ------------------------------------------------------------------------------------ sweep refusals
SWEEP_SPACES = [
    ('{"temperature": [-1, 5]}', "option space: temperature = -1 is refused: option temperature: must be > 0"),
    ('{"alpha": {"uniform": [0.5, 1.5]}}', "option space: alpha = 1.5 is refused: option alpha: must be in [0, 1]"),
    ('{"seed": [0, -1]}', "option space: seed = -1 is refused: option seed: must be >= 0, got -1"),
    ('{"beta": {"randint": [-3, 5]}}', "option space: beta = -3 is refused: option beta: must be >= 0"),
    ('{"temperature": ["hot"]}', "option space: temperature = 'hot' is refused: option temperature: expected a "
                                 "number, got 'hot'"),
    ('{"variant": ["shuffle", "twist"]}', "option space: variant = 'twist' is refused: option variant"),
]


@pytest.mark.parametrize("space,needle", SWEEP_SPACES, ids=[s for s, _ in SWEEP_SPACES])
def test_sweep_space_values_are_checked_against_the_options_bounds(space, needle, tmp_path, tiny_bert, glue_dir,
                                                                   capsys):
    out = tmp_path / "out"
    code, text = _run(["sweep", "--space", space, "--output_dir", str(out), "--glue_dir", str(glue_dir),
                       "--backbone", str(tiny_bert), "--cache_dir", str(tmp_path / "tok")], capsys)
    _one_line_refusal(code, text, needle)
    assert not out.exists() and not (tmp_path / "tok").exists()


def test_sweep_to_an_address_where_nothing_listens_ends_in_one_line(tmp_path, tiny_bert, glue_dir, capsys):
    import ray

    if ray.is_initialized():
        pytest.skip("Ray is already up in this process (init_ray would use it)")
    port = _free_port()
    out = tmp_path / "out"
    code, text = _run(["sweep", "--space", '{"temperature": [2, 5]}', "--address", f"127.0.0.1:{port}",
                       "--output_dir", str(out), "--glue_dir", str(glue_dir), "--backbone", str(tiny_bert),
                       "--cache_dir", str(tmp_path / "tok")], capsys)
    _one_line_refusal(code, text, f"option address: no Ray cluster at '127.0.0.1:{port}' (connection refused")
    assert not out.exists() and not (tmp_path / "tok").exists()
    assert not ray.is_initialized()


def test_probe_address_accepts_a_listening_port_and_leaves_auto_to_ray():
    from dist_peakd.errors import ConfigError
    from dist_peakd.sweep.cluster import probe_address

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        probe_address(f"127.0.0.1:{port}")
        probe_address(f"ray://127.0.0.1:{port}")
    for left_to_ray in (None, "auto", "local"):
        probe_address(left_to_ray)
    with pytest.raises(ConfigError, match=r"no Ray cluster at 'ray://127\.0\.0\.1:\d+' \(connection refused"):
        probe_address(f"ray://127.0.0.1:{_free_port()}")


def test_a_sweep_refused_by_its_resources_leaves_no_folder(tmp_path, tiny_bert, glue_dir, capsys, monkeypatch):
    """The trial's resources are checked (on the started or joined Ray) before the sweep folder is made."""
    from dist_peakd.errors import ConfigError
    from dist_peakd.sweep import cluster, tuner

    monkeypatch.setattr(cluster, "init_ray", lambda *a, **k: False)  # no Ray needed to see the order

    def too_big(settings, local):
        raise ConfigError("one trial needs 100 CPUs and 0 GPUs but the Ray cluster has 2 CPUs")

    monkeypatch.setattr(tuner, "check_resources", too_big)
    out = tmp_path / "out"
    code, text = _run(["sweep", "--space", '{"temperature": [2, 5]}', "--k", "2", "--cpus_per_worker", "100",
                       "--output_dir", str(out), "--glue_dir", str(glue_dir), "--backbone", str(tiny_bert),
                       "--cache_dir", str(tmp_path / "tok")], capsys)
    _one_line_refusal(code, text, "one trial needs 100 CPUs")
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))
