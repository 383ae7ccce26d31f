"""Run and data folders are checked before they are trusted: a flipped bit in a checkpoint, ids
outside the vocabulary, a meta.json naming a file elsewhere, a config.json that no longer fits
its weights. Each is a one-line error before any work (or any allocation) happens."""

import json
import shutil

import numpy as np
import pytest
from conftest import TINY_SETTINGS, one_line_error, run_cli, set_args
from safetensors import safe_open


def flip_a_bit(path, tensor_name):
    """Flip one bit inside `tensor_name`'s bytes in a safetensors file."""
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    raw = bytearray(path.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    start, _ = header[tensor_name]["data_offsets"]
    raw[8 + header_len + start + 3] ^= 0x10
    path.write_bytes(bytes(raw))
    assert tensor_name in keys


def test_a_flipped_bit_in_a_checkpoint_is_found(trained_run, data_dir, small_books, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    latest = run / "checkpoints" / "latest.safetensors"
    with safe_open(str(latest), "pt") as f:
        moment = next(k for k in f.keys() if k.startswith("optim.") and k.endswith("exp_avg_sq"))
    flip_a_bit(latest, moment)  # an AdamW moment: resume would silently destroy the model
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--max-iters", "50"])
    one_line_error(code, err, "fail their checksum")
    best = run / "checkpoints" / "best.safetensors"
    flip_a_bit(best, "model.tok_emb.weight")  # a weight: eval would silently change
    code, err = run_cli(["eval", run, "--text", small_books[0]])
    one_line_error(code, err, "fail their checksum")


def test_ids_outside_the_vocabulary(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    shard = data / json.loads((data / "meta.json").read_text())["splits"]["train"]["shards"][0]["file"]
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[123] = 65535
    ids.tofile(shard)
    code, err = run_cli(["train", "--data", data, "--out", tmp_path / "run", *set_args(TINY_SETTINGS)])
    one_line_error(code, err, "holds token id 65535 at position 123")


def test_a_bin_changed_since_prepare_is_found(data_dir, tmp_path):
    """A token swapped for another id inside the vocabulary: only the bin's sha256 tells."""
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    shard = data / json.loads((data / "meta.json").read_text())["splits"]["val"]["shards"][0]["file"]
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[7] = ids[ids != ids[7]][0]  # another id the bin holds
    ids.tofile(shard)
    code, err = run_cli(["train", "--data", data, "--out", tmp_path / "run", *set_args(TINY_SETTINGS)])
    one_line_error(code, err, f"{shard} has changed since it was prepared")
    assert not (tmp_path / "run").exists()


def test_ids_outside_the_vocabulary_in_a_large_bin_are_found_per_batch(tmp_path):
    from banglaslm.data.folder import TokenFile
    from banglaslm.data.loader import BatchSampler
    from banglaslm.errors import UserError

    ids = np.arange(5000, dtype=np.uint16) % 300
    ids[4321] = 40000
    ids.tofile(tmp_path / "t.bin")
    sampler = BatchSampler(TokenFile(tmp_path / "t.bin", np.uint16, vocab_size=300), 64, 8, seed=0)
    with pytest.raises(UserError, match="holds token id 40000 at position 4,321"):
        for step in range(200):
            sampler.get(step)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "train/../../x.bin", "val/../../x.bin",
                                  "meta/x.bin"])
def test_meta_naming_a_file_outside_its_folder(data_dir, tmp_path, name):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    meta = json.loads((data / "meta.json").read_text())
    meta["splits"]["train"]["shards"][0]["file"] = name
    (data / "meta.json").write_text(json.dumps(meta))
    code, err = run_cli(["train", "--data", data, "--out", tmp_path / "run", *set_args(TINY_SETTINGS)])
    one_line_error(code, err, "not a file of this folder")


@pytest.mark.parametrize("edit, fragment", [
    ({"n_layer": 16, "n_embd": 2048}, "does not match best.safetensors: n_layer (2 in the checkpoint)"),
    ({"block_size": 5_000_000}, "block_size (32 in the checkpoint)"),
    ({"n_head": 0}, "is damaged: bad value 0 for model.n_head"),
    ({"vocab_size": 900}, "vocab_size (600 in the checkpoint)"),
])
def test_a_config_that_does_not_fit_its_weights(trained_run, tmp_path, edit, fragment):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"].update(edit)
    (run / "config.json").write_text(json.dumps(config))
    for argv in (["generate", run, "--prompt", "আমি"], ["export", run, "--format", "hf", "--out", tmp_path / "hf"]):
        code, err = run_cli(argv)
        one_line_error(code, err, fragment)


def test_a_config_edited_under_a_run_is_caught_on_resume(trained_run, data_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["n_embd"] = 2048
    (run / "config.json").write_text(json.dumps(config))
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume"])
    one_line_error(code, err, "does not match latest.safetensors: n_embd")
