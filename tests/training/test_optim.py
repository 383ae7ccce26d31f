"""The optimizer choices and the learning-rate schedules: which weights Muon takes, that the
Muon + AdamW pair survives a checkpoint exactly, that it trains, and the wsd schedule's shape."""

import json

import pytest
import torch
from conftest import TINY_SETTINGS

from banglaslm.checkpoint import load_checkpoint, save_checkpoint
from banglaslm.config import RunConfig, build_config
from banglaslm.errors import UserError
from banglaslm.model import GPT
from banglaslm.training.optim import (
    BF16_CPU_MIN_WIDTH,
    MuonAdamW,
    lr_at,
    make_optimizer,
    resolve_precision,
    set_lr,
)
from banglaslm.training.trainer import train

SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 16, "vocab_size": 40, "block_size": 8, "dropout": 0.0}


def _model_and_optimizer(arch="modern", optimizer="muon", seed=0):
    cfg = build_config(overrides={**SHAPE, "arch": arch, "optimizer": optimizer, "learning_rate": 1e-2})
    torch.manual_seed(seed)
    model = GPT(cfg.model)
    return model, make_optimizer(model, cfg.train)


def _steps(model, optimizer, batches, first=0):
    for i, x in enumerate(batches, start=first):
        set_lr(optimizer, 1e-2 / (1 + i))  # a schedule, as the trainer sets it every step
        loss = model(x[:, :-1], x[:, 1:])[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(arch):
    model, opt = _model_and_optimizer(arch)
    assert isinstance(opt, MuonAdamW)
    muon, adamw = opt.parts
    orthogonal = {id(p) for g in muon.param_groups for p in g["params"]}
    blocks_2d = {id(p) for p in model.blocks.parameters() if p.dim() == 2}
    assert orthogonal == blocks_2d
    everything = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())  # each weight once
    assert id(model.tok_emb.weight) in {id(p) for g in adamw.param_groups for p in g["params"]}
    assert muon.param_groups[0]["weight_decay"] == 0.1


def test_the_schedule_sets_muon_at_its_ratio_of_the_learning_rate():
    cfg = build_config(overrides={**SHAPE, "optimizer": "muon", "muon_lr_ratio": 4.0})
    opt = make_optimizer(GPT(cfg.model), cfg.train)
    set_lr(opt, 1e-3)
    muon, adamw = opt.parts
    assert [g["lr"] for g in muon.param_groups] == [pytest.approx(4e-3)]
    assert [g["lr"] for g in adamw.param_groups] == [1e-3, 1e-3]


def test_muon_and_adamw_state_survives_a_checkpoint_bit_for_bit(tmp_path):
    """...and the schedule still reaches both after a load (a resumed Muon run kept the saved
    learning rate for the rest of the run: its param groups were the ones before the load)."""
    torch.manual_seed(1)
    batches = [torch.randint(0, 40, (4, 9)) for _ in range(6)]
    model, opt = _model_and_optimizer()
    _steps(model, opt, batches)  # uninterrupted

    first, opt1 = _model_and_optimizer()
    _steps(first, opt1, batches[:3])
    save_checkpoint(tmp_path / "c.safetensors", first, {"iter": 3}, opt1)
    ckpt = load_checkpoint(tmp_path / "c.safetensors")
    resumed, opt2 = _model_and_optimizer(seed=99)  # other initial weights: all must come from the file
    resumed.load_state_dict(ckpt.model_state(), strict=False)
    opt2.load_state_dict(ckpt.optimizer_state())
    _steps(resumed, opt2, batches[3:], first=3)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    muon_state = opt2.parts[0].state
    assert len(muon_state) == sum(len(g["params"]) for g in opt2.parts[0].param_groups)  # momentum restored


def test_an_adamw_state_is_refused_by_muon_with_nothing_loaded():
    model, adamw = _model_and_optimizer(optimizer="adamw")
    _steps(model, adamw, [torch.randint(0, 40, (4, 9))])
    _, muon = _model_and_optimizer()
    with pytest.raises(UserError, match="not this Muon"):
        muon.load_state_dict(adamw.state_dict())
    assert all(not part.state for part in muon.parts)


def test_a_muon_run_learns_and_checkpoints_every_moment(data_dir, tmp_path):
    cfg = build_config(overrides={**TINY_SETTINGS, "train.optimizer": "muon", "train.max_iters": 30,
                                  "train.lr_schedule": "wsd", "model.dropout": 0.0})
    train(data_dir, tmp_path / "run", cfg, progress=False)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["loss"] for r in evals if r.get("split") == "val"]
    assert val[-1] < val[0] - 0.3
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.safetensors")
    with_state = {k.split(".")[1] for k in ckpt.tensors if k.startswith("optim.")}
    model = GPT(RunConfig.from_dict(ckpt.state["config"]).model)
    assert len(with_state) == len(list(model.parameters()))  # every weight's moments are saved


def test_muon_with_fsdp_is_refused_in_one_line():
    with pytest.raises(UserError, match="train.parallel=ddp"):
        build_config(overrides={"optimizer": "muon", "parallel": "fsdp"})


def test_wsd_holds_the_peak_then_decays_linearly_on_steps_and_on_the_clock():
    tc = build_config(overrides={"learning_rate": 1e-3, "warmup_iters": 10, "max_iters": 110,
                                 "lr_schedule": "wsd", "decay_fraction": 0.2}).train
    lrs = [lr_at(i, tc) for i in range(111)]
    assert lrs[0] < lrs[9] < 1e-3
    assert all(lr == pytest.approx(1e-3) for lr in lrs[10:91])          # stable: 80% of the 100 steps
    assert lrs[100] == pytest.approx(1e-4 + 0.5 * 9e-4)                  # half-way down the decay
    assert all(a > b for a, b in zip(lrs[90:], lrs[91:]))                # strictly down to the floor
    assert lrs[110] == pytest.approx(1e-4)
    assert lr_at(50, tc, progress=0.7) == pytest.approx(1e-3)
    assert lr_at(50, tc, progress=0.9) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(50, tc, progress=2.0) == pytest.approx(1e-4)


@pytest.mark.parametrize("value", [0, 1.5])
def test_decay_fraction_out_of_range_is_refused(value):
    with pytest.raises(UserError, match="train.decay_fraction"):
        build_config(overrides={"decay_fraction": value})


@pytest.mark.parametrize("native, width, expected", [(True, 128, "fp32"), (True, BF16_CPU_MIN_WIDTH - 1, "fp32"),
                                                     (True, BF16_CPU_MIN_WIDTH, "bf16"), (True, 512, "bf16"),
                                                     (False, 512, "fp32")])
def test_auto_precision_on_a_cpu_weighs_the_width(monkeypatch, native, width, expected):
    import banglaslm.training.optim as optim

    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", torch.device("cpu"), width) == expected
    assert resolve_precision("bf16", torch.device("cpu"), 64) == "bf16"  # asked for: always given
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"), width)
