import numpy as np
import pytest
import torch

from banglaslm.data.folder import DataFolder
from banglaslm.data.loader import EVAL_STREAM, BatchSampler
from banglaslm.errors import UserError


def test_windows_are_contiguous_and_y_is_x_shifted():
    tokens = np.arange(1000, dtype=np.uint16)  # token value == position, so windows are checkable
    s = BatchSampler(tokens, block_size=16, batch_size=8, seed=1)
    x, y = s.get(step=3)
    assert x.shape == y.shape == (8, 16) and str(x.dtype) == "torch.int64"
    assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
    assert ((x[:, 1:] - x[:, :-1]) == 1).all()  # each row is one contiguous window
    assert int(y.max()) <= 999


def test_batches_are_a_pure_function_of_seed_rank_step():
    tokens = np.arange(5000, dtype=np.uint32)
    a = BatchSampler(tokens, 8, 4, seed=5)
    b = BatchSampler(tokens, 8, 4, seed=5)
    assert (a.get(10)[0] == b.get(10)[0]).all()  # any order, any process: same batch
    assert not (a.get(10)[0] == a.get(11)[0]).all()
    assert not (a.get(10)[0] == a.get(10, micro=1)[0]).all()
    assert not (a.get(10)[0] == a.get(10, stream=EVAL_STREAM)[0]).all()

def test_ranks_split_one_global_batch():
    tokens = np.arange(5000, dtype=np.uint32)
    whole = BatchSampler(tokens, 8, 6, seed=5).get(7)[0]
    halves = [BatchSampler(tokens, 8, 3, seed=5, rank=r, world_size=2).get(7)[0] for r in (0, 1)]
    assert (whole[:3] == halves[0]).all() and (whole[3:] == halves[1]).all()


def test_too_few_tokens_for_one_block():
    with pytest.raises(UserError, match="no stretch of one block"):
        BatchSampler(np.arange(10, dtype=np.uint16), block_size=16, batch_size=2, seed=0, split="val")


def test_data_folder_checks(tmp_path, data_dir):
    with pytest.raises(UserError, match="not a prepared data folder"):
        DataFolder(tmp_path)
    with pytest.raises(UserError, match=r"^data folder not found: .*missing; check the path"):  # not "no meta.json"
        DataFolder(tmp_path / "missing")
    folder = DataFolder(data_dir)
    assert len(folder.tokens("train")) == folder.meta["splits"]["train"]["tokens"]
    # A truncated bin is detected instead of silently training on less data.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    with open(copy / folder.shards["train"][0]["file"], "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(UserError, match="truncated"):
        DataFolder(copy).tokens("train")


def test_token_file_windows_equal_in_memory_gather(tmp_path):
    from banglaslm.data.folder import TokenFile

    data = np.random.default_rng(0).integers(0, 60000, 10_000, dtype=np.uint16)
    data.tofile(tmp_path / "t.bin")
    f = TokenFile(tmp_path / "t.bin", np.uint16)
    assert len(f) == 10_000 and (f.read() == data).all()
    from_file = BatchSampler(f, 32, 8, seed=3).get(5)
    in_memory = BatchSampler(data, 32, 8, seed=3).get(5)
    assert all((a == b).all() for a, b in zip(from_file, in_memory))


def test_windows_across_shards_stay_inside_one_and_follow_their_sizes(tmp_path):
    from banglaslm.data.folder import TokenFile, TokenShards

    sizes = [500, 20, 1500]  # the middle shard is shorter than a window: never drawn
    files = []
    for i, n in enumerate(sizes):
        (np.full(n, i, dtype=np.uint16)).tofile(tmp_path / f"{i}.bin")
        files.append(TokenFile(tmp_path / f"{i}.bin", np.uint16))
    shards = TokenShards(files)
    assert len(shards) == 2020 and shards.starts(33) == (500 - 32) + (1500 - 32)
    sampler = BatchSampler(shards, 32, 64, seed=2)
    drawn = np.concatenate([torch.cat(sampler.get(step), 1).numpy() for step in range(40)])
    assert (drawn == drawn[:, :1]).all()  # every window comes from one shard
    share_last = (drawn[:, 0] == 2).mean()
    assert abs(share_last - 1468 / 1936) < 0.04 and not (drawn[:, 0] == 1).any()


def test_a_version_1_folder_still_loads_and_draws_the_same_batches(tmp_path, data_dir):
    import json
    import shutil

    old = tmp_path / "v1"
    shutil.copytree(data_dir, old)
    meta = json.loads((old / "meta.json").read_text())
    meta["version"] = 1
    for split in ("train", "val"):
        s = meta["splits"][split]
        (shard,) = s.pop("shards")
        shutil.move(old / shard["file"], old / f"{split}.bin")
        shutil.rmtree(old / split)
        s.update(file=f"{split}.bin", sha256=shard["sha256"])
        del s["digest"]
    (old / "meta.json").write_text(json.dumps(meta))
    new_batches = DataFolder(data_dir).samplers(16, 4, 1, seed=3)[0].get(7)
    old_batches = DataFolder(old).samplers(16, 4, 1, seed=3)[0].get(7)
    assert all((a == b).all() for a, b in zip(new_batches, old_batches))
