"""`train.logger=tensorboard`: TensorBoard's own reader sees exactly the numbers of
metrics.jsonl, a resumed run continues the same curves, and a missing package is one line."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import TINY_SETTINGS, set_args

from banglaslm.cli import main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def from_metrics(run) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        if "split" in r:
            out.setdefault(f"eval/{r['split']}_loss", []).append((r["iter"], r["loss"]))
        elif "event" not in r:
            for key in ("loss", "lr", "grad_norm"):
                out.setdefault(f"train/{key}", []).append((r["iter"], r[key]))
    return out


def test_tensorboard_curves_equal_the_metrics_and_continue_after_resume(data_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(data_dir), "--out", str(run), *set_args(TINY_SETTINGS),
            "--set", "train.logger=tensorboard"]
    assert main([*args, "--set", "train.max_iters=20"]) == 0
    assert main([*args, "--set", "train.max_iters=40", "--resume"]) == 0
    written, expected = scalars(run), from_metrics(run)
    for tag, points in expected.items():
        steps = [s for s, _ in written[tag]]
        assert steps == [s for s, _ in points], tag  # one curve: no step twice, none missing
        assert [v for _, v in written[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert written["eval/val_loss"][-1][0] == 40


def test_a_missing_tensorboard_is_one_line(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    code = main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), *set_args(TINY_SETTINGS),
                 "--set", "train.logger=tensorboard"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install 'banglaslm[tensorboard]'" in err, err
    assert not (tmp_path / "run").exists()
