"""train.ema_decay: the weight average is the run's model (evaluated and checkpointed as
`model.*`), the trained weights travel beside it (`live.*`), and a run stopped and resumed
ends bit-identical to one that was not."""

import pytest
import torch
from conftest import TINY_SETTINGS, stop_training_at
from safetensors.torch import load_file

from banglaslm.config import build_config
from banglaslm.errors import UserError
from banglaslm.runfolder import load_model
from banglaslm.training.averaging import WeightAverage
from banglaslm.training.trainer import Trainer, TrainingInterrupted, train

EMA_SETTINGS = {**TINY_SETTINGS, "train.ema_decay": 0.9, "train.max_iters": 24, "train.checkpoint_interval": 4}


def test_the_average_follows_its_recursion_and_applied_always_puts_the_weights_back():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2, bias=False)
    average = WeightAverage(layer, 0.9)
    expected = layer.weight.detach().clone()
    for step in range(30):
        with torch.no_grad():
            layer.weight.add_(torch.randn_like(layer.weight))
        average.update(step)
        decay = min(0.9, (1 + step) / (10 + step))  # the warm-up of the decay, then 0.9
        expected = decay * expected + (1 - decay) * layer.weight.detach()
    assert torch.allclose(average.average["weight"], expected, atol=1e-6)
    trained = layer.weight.detach().clone()
    with pytest.raises(RuntimeError, match="inside"):
        with average.applied() as live:
            assert torch.equal(layer.weight, average.average["weight"])
            assert torch.equal(live["live.weight"], trained)
            raise RuntimeError("inside")
    assert torch.equal(layer.weight, trained)


def test_a_run_evaluates_and_checkpoints_the_average(data_dir, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(build_config(overrides=EMA_SETTINGS), data_dir, run, progress=False)
    trainer.train()
    saved = load_file(str(run / "checkpoints" / "latest.safetensors"))
    params = dict(trainer.model.named_parameters())
    assert sorted(k[len("live."):] for k in saved if k.startswith("live.")) == sorted(params)
    for name, p in params.items():
        assert torch.equal(saved[f"live.{name}"], p.detach())  # the trained weights, beside
        assert torch.equal(saved[f"model.{name}"], trainer.average.average[name])  # the average is the model
        assert not torch.equal(saved[f"model.{name}"], saved[f"live.{name}"]), name
    # Evaluation scores the average (the trained weights score otherwise), and what
    # `load_model` hands to eval and generate is the average too.
    final = trainer.state.history[-1]["val"]
    assert trainer.evaluate()["val"] == pytest.approx(final, rel=1e-6)
    assert trainer._evaluate()["val"] != pytest.approx(final, rel=1e-4)
    loaded = dict(load_model(run, "latest").model.named_parameters())
    assert all(torch.equal(loaded[n].detach(), trainer.average.average[n]) for n in params)


def test_stopped_and_resumed_ends_bit_identical(data_dir, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    train(data_dir, reference, build_config(overrides=EMA_SETTINGS), progress=False)
    run = tmp_path / "run"
    stop_training_at(monkeypatch, 9)
    with pytest.raises(TrainingInterrupted):
        train(data_dir, run, build_config(overrides=EMA_SETTINGS), progress=False)
    monkeypatch.undo()
    train(data_dir, run, resume=True, progress=False)
    a, b = (load_file(str(r / "checkpoints" / "latest.safetensors")) for r in (reference, run))
    tensors = [k for k in a if k.startswith(("model.", "live.", "optim."))]
    assert any(k.startswith("live.") for k in tensors) and sorted(a) == sorted(b)
    for key in tensors:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("settings, message", [
    ({"train.ema_decay": 1.0}, r"for train.ema_decay: must be in \[0, 1\)"),
    ({"train.ema_decay": 0.99, "train.parallel": "fsdp"}, "ema_decay=0.99 .*which FSDP and LoRA do not hold; set train.ema_decay=0"),
    ({"train.ema_decay": 0.99, "finetune.lora_rank": 4}, "which FSDP and LoRA do not hold; set train.ema_decay=0"),
])
def test_settings_averaging_cannot_run_with_are_refused(settings, message):
    from banglaslm.config import validate

    with pytest.raises(UserError, match=message):
        validate(build_config(overrides=settings))


def test_the_memory_estimate_counts_the_average():
    from banglaslm.training.memory import parameter_count, training_bytes

    plain = build_config("tiny", overrides={"train.ema_decay": 0.0, "model.vocab_size": 2048})
    averaged = build_config("tiny", overrides={"model.vocab_size": 2048})
    assert averaged.train.ema_decay == 0.998  # the tiny preset averages (docs/speedrun-log.md)
    assert training_bytes(averaged) - training_bytes(plain) == 8 * parameter_count(plain)
