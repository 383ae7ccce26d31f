"""Poisoned updates are skipped and counted; repeated failures stop the run clearly."""

import json
import math

import pytest
import torch
from conftest import TINY_SETTINGS

from banglaslm.config import build_config
from banglaslm.training.guard import TrainingDiverged, UpdateGuard
from banglaslm.training.trainer import Trainer


def make_trainer(data_dir, run, **overrides):
    cfg = build_config(overrides={**TINY_SETTINGS, **overrides})
    return Trainer(cfg, data_dir, run, progress=False)


def test_non_finite_step_is_skipped_and_counted(data_dir, tmp_path, monkeypatch):
    trainer = make_trainer(data_dir, tmp_path / "run", **{"train.max_iters": 12, "train.log_interval": 1})
    original = trainer.forward_model.forward
    calls = {"n": 0}

    def poisoned(x, y=None):
        logits, loss = original(x, y)
        calls["n"] += 1
        if calls["n"] == 6:  # one bad micro-batch in the middle of the run
            loss = loss * float("nan")
        return logits, loss
    monkeypatch.setattr(trainer.forward_model, "forward", poisoned)
    before = {}

    real_step = trainer._step

    def step(it, prefetch=None):
        if calls["n"] == 5:
            before.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        out = real_step(it, prefetch)
        if calls["n"] == 6:
            after = trainer.model.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before)  # weights untouched
        return out
    monkeypatch.setattr(trainer, "_step", step)
    result = trainer.train()
    assert result.skipped_updates == 1
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "split" not in r]
    assert steps[-1]["skipped_updates"] == 1
    assert all(math.isfinite(r["loss"]) for r in records if "split" in r)  # the model was not poisoned


def test_outlier_gradient_norm_is_skipped(tmp_path):
    guard = UpdateGuard(build_config(overrides=TINY_SETTINGS).train, "fp32", tmp_path / "latest.safetensors")
    guard.norms.extend([1.0] * 20)
    assert guard.skip(5.0) is False      # within 10x the median
    assert guard.skip(50.0) is True      # a spike
    assert guard.skip(float("inf")) is True
    assert guard.skipped_total == 2 and guard.skipped_in_row == 2
    assert guard.skip(1.1) is False and guard.skipped_in_row == 0  # a good step resets the count


def test_repeated_failures_stop_with_a_pointer_to_the_last_checkpoint(data_dir, tmp_path):
    trainer = make_trainer(data_dir, tmp_path / "run", **{"train.learning_rate": 1e6, "train.grad_clip": 0,
                                                          "train.max_skipped_updates": 3, "train.warmup_iters": 0})
    with pytest.raises(TrainingDiverged, match=r"3 updates in a row were skipped.*latest.safetensors.*--resume"):
        trainer.train()
    assert (tmp_path / "run" / "checkpoints" / "latest.safetensors").is_file()


def test_compile_falls_back_to_eager_with_a_warning(data_dir, tmp_path, monkeypatch, capsys):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")
    monkeypatch.setattr(torch, "compile", broken_compile)
    trainer = make_trainer(data_dir, tmp_path / "run", **{"train.compile": "true", "train.max_iters": 5})
    assert trainer.forward_model is trainer.model  # eager
    assert "torch.compile unavailable (no C++ compiler found)" in capsys.readouterr().err
    assert trainer.train().iterations == 5
