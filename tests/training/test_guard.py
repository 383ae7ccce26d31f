"""The update guard: non-finite updates are skipped and counted, spikes are clipped and applied,
and a run stops only on repeated non-finite gradients, with advice that matches the disk."""

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


def guard(**overrides) -> UpdateGuard:
    return UpdateGuard(build_config(overrides={**TINY_SETTINGS, **overrides}).train, "fp32", lambda: "ON DISK")


def test_a_spike_is_clipped_to_its_bound_not_skipped():
    g = guard(**{"train.grad_clip": 0})
    g.norms.extend([1.0] * 20)
    assert g.bound(5.0) == math.inf        # within 10x the median: no clipping (clipping is off)
    assert g.bound(50.0) == 10.0           # a spike: applied, clipped to 10x the median
    assert g.clipped_spikes == 1 and g.skipped_total == 0
    assert guard().bound(0.5) == 1.0       # otherwise the bound is train.grad_clip (1.0)


def test_a_run_that_keeps_spiking_is_never_stopped():
    # The failure this replaces: after one bad update every following gradient was ~80x the
    # median; skipping them left the weights where they were, and the run stopped at the 5th.
    g = guard()
    for norm in [0.5] * 30 + [42.0] * 200:
        assert g.bound(norm) == min(1.0, 5.0)  # grad_clip 1.0 is below 10x the median (5.0)
    assert g.skipped_total == 0 and g.clipped_spikes > 0


def test_non_finite_gradients_are_skipped_and_stop_after_max_in_a_row():
    g = guard(**{"train.max_skipped_updates": 3})
    assert g.bound(float("nan")) is None and g.bound(float("inf")) is None
    assert g.skipped_total == 2 and g.skipped_in_row == 2
    assert g.bound(1.1) == 1.0 and g.skipped_in_row == 0  # a good step resets the count
    g.bound(float("nan"))
    g.bound(float("nan"))
    with pytest.raises(TrainingDiverged, match="3 updates in a row had a non-finite gradient.*ON DISK"):
        g.bound(float("nan"))
    fp16 = UpdateGuard(build_config(overrides=TINY_SETTINGS).train, "fp16", lambda: "")
    assert fp16.bound(float("inf")) == math.inf and fp16.skipped_total == 0  # the scaler's business


def test_a_loss_spike_mid_run_is_clipped_and_training_goes_on(data_dir, tmp_path, monkeypatch):
    trainer = make_trainer(data_dir, tmp_path / "run", **{"train.max_iters": 30, "train.log_interval": 1,
                                                          "train.max_skipped_updates": 2})
    original = trainer.forward_model.forward
    calls = {"n": 0}

    def spiking(x, y=None):
        logits, loss = original(x, y)
        calls["n"] += trainer.model.training  # training steps only, not evaluations
        return logits, loss * 1000 if trainer.model.training and 15 <= calls["n"] <= 20 else loss
    monkeypatch.setattr(trainer.forward_model, "forward", spiking)
    result = trainer.train()
    assert result.iterations == 30 and result.skipped_updates == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("clipped_spikes", 0) for r in records) >= 6
    assert all(math.isfinite(r["loss"]) for r in records)


def test_the_stop_message_names_what_is_on_disk(data_dir, tmp_path):
    # Nothing past iteration 0 on disk: the advice is to start again, not to resume.
    trainer = make_trainer(data_dir, tmp_path / "run", **{"train.learning_rate": 1e6, "train.grad_clip": 0,
                                                          "train.max_skipped_updates": 3, "train.warmup_iters": 0})
    with pytest.raises(TrainingDiverged, match=r"3 updates in a row .* no checkpoint past iteration 0 .* start again"):
        trainer.train()
    # A checkpoint at iteration 10: the advice names it and says how to go on from it.
    run = tmp_path / "run2"
    make_trainer(data_dir, run, **{"train.max_iters": 10}).train()
    trainer = Trainer(build_config(overrides={**TINY_SETTINGS, "train.max_iters": 40, "train.learning_rate": 1e6,
                                              "train.grad_clip": 0, "train.max_skipped_updates": 3}),
                      data_dir, run, resume=True, progress=False)
    with pytest.raises(TrainingDiverged, match=r"latest.safetensors, is from iteration 10.*`resume` and a lower train.learning_rate"):
        trainer.train()


def test_compile_falls_back_to_eager_with_a_warning(data_dir, tmp_path, monkeypatch, capsys):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")
    monkeypatch.setattr(torch, "compile", broken_compile)
    trainer = make_trainer(data_dir, tmp_path / "run", **{"train.compile": "true", "train.max_iters": 5})
    assert trainer.forward_model is trainer.model  # eager
    assert "torch.compile unavailable (no C++ compiler found)" in capsys.readouterr().err
    assert trainer.train().iterations == 5
