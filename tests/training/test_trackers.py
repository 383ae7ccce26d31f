"""`train.logger=tensorboard|wandb`: each library's own reader sees exactly the numbers of
metrics.jsonl, a resumed run continues the same curves, and a missing package is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import TINY_SETTINGS, set_args

from banglaslm.cli import main


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def from_metrics(run) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        if "split" in r:
            out.setdefault(f"eval/{r['split']}_loss", []).append((r["iter"], r["loss"]))
            out.setdefault(f"eval/{r['split']}_bits_per_char", []).append((r["iter"], r["bits_per_char"]))
        elif "event" not in r:
            for key in ("loss", "lr", "grad_norm"):
                out.setdefault(f"train/{key}", []).append((r["iter"], r[key]))
    return out


def test_tensorboard_curves_equal_the_metrics_and_continue_after_resume(data_dir, tmp_path):
    pytest.importorskip("tensorboard")
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


# ---- Weights & Biases, offline ---------------------------------------------------------------
def wandb_records(run) -> list[list[dict]]:
    """Each offline part of the run (one per start), read back by wandb's own reader of its
    transaction log (`wandb leet inspect --json`): a list of records per part, in order."""
    parts = []
    for log in sorted((run / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name):
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        parts.append([json.loads(line) for line in out.splitlines() if line.startswith("{")])
    return parts


def test_wandb_offline_run_holds_the_metrics_and_resumes_the_same_run(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    monkeypatch.setenv("WANDB_API_KEY", "")           # and needs no account
    run = tmp_path / "run"
    args = ["train", "--data", str(data_dir), "--out", str(run), *set_args(TINY_SETTINGS), "--set", "train.logger=wandb"]
    assert main([*args, "--set", "train.max_iters=20"]) == 0
    assert main([*args, "--set", "train.max_iters=40", "--resume"]) == 0
    parts = wandb_records(run)
    assert len(parts) == 2
    headers = [next(r["run"] for r in part if r["type"] == "run") for part in parts]
    assert headers[0]["run_id"] == headers[1]["run_id"] == (run / "wandb" / "run_id").read_text().strip()
    assert headers[1].get("resume") is True and headers[0]["telemetry"]["feature"]["offline"] is True
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))  # the resumed run's (40 steps)
    logged_config = {k: v for k, v in headers[1]["config"]["update"].items() if k != "_wandb"}
    assert logged_config == {k: v for k, v in config.items() if k not in ("format", "version")}
    assert headers[0]["config"]["update"]["train"]["max_iters"] == 20
    logged: dict[str, list[tuple[int, float]]] = {}
    for part in parts:
        for r in part:
            if r["type"] == "history":
                for key, value in r["history"]["item"].items():
                    if not key.startswith("_"):
                        logged.setdefault(key, []).append((r["history"]["step"]["num"], value))
    expected = from_metrics(run)
    assert "eval/val_bits_per_char" in expected
    for tag, points in expected.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in points], tag  # one curve, no step twice
        assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_a_missing_wandb_is_one_line(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    code = main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), *set_args(TINY_SETTINGS),
                 "--set", "train.logger=wandb"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install 'banglaslm[wandb]'" in err, err
    assert not (tmp_path / "run").exists()
