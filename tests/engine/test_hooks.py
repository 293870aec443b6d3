"""Trainer hooks and plugins: the points where tests (fault injection) and sweeps (reporting) act."""

from __future__ import annotations

import json

import pytest

from dist_peakd.config import build_options
from dist_peakd.engine.hooks import PLUGINS_ENV, plugin_hooks
from dist_peakd.errors import ConfigError
from dist_peakd.stages import finetune_teacher

RECORDER = '''
CALLS = []


class Recorder:
    def on_step_end(self, trainer):
        CALLS.append(("step", trainer.engine.global_step, trainer.state["step_in_epoch"]))

    def on_eval(self, step, metrics):
        CALLS.append(("eval", step, sorted(metrics)))


def trainer_hooks():
    return [Recorder()]
'''


def test_a_plugin_named_in_the_environment_sees_every_step_and_evaluation(tmp_path, monkeypatch, tiny_bert,
                                                                         glue_dir):
    (tmp_path / "recorder_plugin.py").write_text(RECORDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(PLUGINS_ENV, "recorder_plugin")
    import recorder_plugin

    opts = build_options(finetune_teacher.FinetuneTeacherOptions, task="mrpc", output_dir=str(tmp_path / "run"),
                         glue_dir=str(glue_dir), backbone=str(tiny_bert), max_length=32, max_train_examples=24,
                         max_eval_examples=16, batch_size=8, epochs=2, eval_every_steps=2, lr=1e-3,
                         cache_dir=str(tmp_path / "tok"))
    summary = finetune_teacher.run(opts)
    # 3 steps per epoch, eval_every_steps=2: mid-epoch evaluations at steps 2 and 4 (each before that step's
    # on_step_end), epoch-end ones at 3 and 6 (after it)
    ev = ["accuracy", "f1", "loss"]  # the task's metrics and the dev loss
    assert recorder_plugin.CALLS == [("step", 1, 1), ("eval", 2, ev), ("step", 2, 2), ("step", 3, 3), ("eval", 3, ev),
                                     ("eval", 4, ev), ("step", 4, 1), ("step", 5, 2), ("step", 6, 3), ("eval", 6, ev)]
    assert [h["step"] for h in summary["history"]] == [2, 3, 4, 6]
    assert json.loads((tmp_path / "run" / "mrpc" / "teacher" / "summary.json").read_text())["final"]["step"] == 6


def test_plugins_unset_or_bad():
    assert plugin_hooks("") == []
    with pytest.raises(ConfigError, match=f"{PLUGINS_ENV}='no_such_plugin_module'"):
        plugin_hooks("no_such_plugin_module")
