"""`train.micro_batch=auto`: out of memory, a micro-batch runs in halves (then quarters) with
the gradients accumulated, so the global batch and the loss trajectory stay those of an
uninterrupted run; said once per halving. Without it, out of memory is a one-line error.
On the CPU the error is simulated: the model raises torch.OutOfMemoryError, as CUDA's
allocator does, whenever it is given more rows than a limit (tests/test_cuda.py caps real GPU
memory instead)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_SETTINGS, set_args

from banglaslm.cli import main
from banglaslm.config import build_config
from banglaslm.errors import UserError
from banglaslm.model import GPT
from banglaslm.training import memory

SETTINGS = {**TINY_SETTINGS, "model.dropout": 0.0, "train.batch_size": 8, "train.max_iters": 20}


def limit_rows(monkeypatch, limit: int) -> list[int]:
    """Make every training forward pass of more than `limit` rows fail as CUDA would; returns
    the row counts of the passes that ran."""
    original, seen = GPT.forward, []

    def forward(self, idx, targets=None, cache=None):
        if targets is not None and idx.size(0) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        if targets is not None and torch.is_grad_enabled():
            seen.append(idx.size(0))
        return original(self, idx, targets, cache)

    monkeypatch.setattr(GPT, "forward", forward)
    return seen


def losses(run) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["loss"]) for r in records if "split" not in r and "event" not in r]


def test_auto_halves_the_micro_batch_and_keeps_the_trajectory(data_dir, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"
    assert main(["train", "--data", str(data_dir), "--out", str(reference), *set_args(SETTINGS)]) == 0
    seen = limit_rows(monkeypatch, 2)
    run = tmp_path / "auto"
    assert main(["train", "--data", str(data_dir), "--out", str(run), *set_args(SETTINGS),
                 "--set", "train.micro_batch=auto"]) == 0
    err = capsys.readouterr().err
    assert err.count("out of cuda memory") + err.count("out of cpu memory") == 2, err  # once per halving
    assert "continuing with 4 per pass" in err and "continuing with 2 per pass" in err
    assert set(seen) == {2} and len(seen) == 4 * 20  # every step: 4 passes of 2 rows
    got, want = losses(run), losses(reference)
    assert [i for i, _ in got] == [i for i, _ in want]
    # The same gradients summed in another order: float32 rounding only, compounded over 20
    # Adam steps (measured 8e-8 relative at worst).
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-4)


def test_fixed_micro_batch_out_of_memory_is_one_line(data_dir, tmp_path, monkeypatch, capsys):
    limit_rows(monkeypatch, 2)
    code = main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), *set_args(SETTINGS)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train.micro_batch=auto" in err[0], err


def test_auto_stops_when_one_row_does_not_fit(data_dir, tmp_path, monkeypatch, capsys):
    limit_rows(monkeypatch, 0)
    code = main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), *set_args(SETTINGS),
                 "--set", "train.micro_batch=auto"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "at 1 sequences per forward pass" in last and "model.block_size" in last, last


@pytest.mark.parametrize("have_gib, mode, batch, expected", [
    (64, "fixed", 32, 1), (64, "auto", 32, 1), (2.0, "auto", 32, 4), (2.0, "fixed", 32, None),
    (0.0001, "auto", 32, None),
    (2.0, "auto", 36, 8),  # 36 halves twice only: auto refused it ("needs about ... GiB"), as any batch not 2^k
    (3.0, "auto", 600, 64)])
def test_the_estimate_plans_the_passes(monkeypatch, have_gib, mode, batch, expected):
    cfg = build_config("course-58m", overrides={"model.vocab_size": 32100, "train.batch_size": batch,
                                                "train.micro_batch": mode})
    monkeypatch.setattr(memory, "device_memory", lambda device: int(have_gib * 2**30))
    if expected is None:
        with pytest.raises(UserError, match="lower train.batch_size"):
            memory.plan_passes(cfg, torch.device("cpu"))
    else:
        assert memory.plan_passes(cfg, torch.device("cpu")) == expected
        passes = memory.plan_passes(cfg, torch.device("cpu"))
        assert memory.training_bytes(cfg, passes=passes) <= have_gib * 2**30
