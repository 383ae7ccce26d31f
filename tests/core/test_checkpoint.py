
import pytest
import torch

from banglaslm.checkpoint import load_checkpoint, model_tensors, save_checkpoint
from banglaslm.config import build_config
from banglaslm.errors import UserError
from banglaslm.model import GPT


def small_model():
    cfg = build_config(overrides={"arch": "modern", "n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 30})
    return GPT(cfg.model)


def test_round_trip_without_pickle(tmp_path):
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, {"iter": 7, "history": [{"iter": 0, "val": 3.0}]}, opt)
    raw = path.read_bytes()
    assert b"pickle" not in raw[:2000] and raw[8:9] == b"{"  # safetensors: length + JSON header
    ckpt = load_checkpoint(path)
    assert ckpt.state["iter"] == 7 and ckpt.state["history"][0]["val"] == 3.0
    again = small_model()
    again.load_state_dict(ckpt.model_state(), strict=False)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    opt2 = torch.optim.AdamW(again.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt.optimizer_state())
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_tied_weights_stored_once():
    model = small_model()
    tensors = model_tensors(model)
    assert "tok_emb.weight" in tensors and "lm_head.weight" not in tensors


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign"])
def test_damaged_checkpoints_give_clear_errors(tmp_path, damage):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, small_model(), {"iter": 1})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x07" * 64 + data[64:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(UserError, match="damaged or truncated"):
        load_checkpoint(path)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    model = small_model()
    save_checkpoint(path, model, {"iter": 1})
    before = path.read_bytes()

    import safetensors.torch

    def crash(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, model, {"iter": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left


KILLED_MID_SAVE = """
import os, signal, sys, safetensors.torch, torch
import banglaslm.checkpoint as ck
real = safetensors.torch.save_file
def save_then_die(tensors, filename, metadata=None):
    # safetensors writes a temp file of its own beside `filename`, then renames it: die before.
    real(tensors, os.path.join(os.path.dirname(filename), ".tmpAbC123"), metadata=metadata)
    os.kill(os.getpid(), signal.SIGKILL)
safetensors.torch.save_file = save_then_die
ck.write_checkpoint(sys.argv[1], {"w": torch.zeros(1000)}, {"iter": 1})
"""


def test_a_save_killed_mid_write_leaves_nothing_the_next_run_keeps(tmp_path):
    """safetensors' own temp file (`.tmpXXXXXX`, a checkpoint's size) outlived a kill -9 during a
    save: no run removed it. It now lies in atomic_path's temp folder, which the next run removes."""
    import subprocess
    import sys

    from banglaslm.runfolder import RunFolder

    run = RunFolder(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(run.checkpoints / "latest.safetensors")])
    assert killed.returncode == -9
    assert [p.name for p in run.checkpoints.iterdir()] != []  # it left something
    run.remove_leftovers()
    assert list(run.checkpoints.iterdir()) == []
