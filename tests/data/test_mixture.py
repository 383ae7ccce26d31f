"""Mixtures of data folders: windows drawn by weight, one tokenizer, the mixture recorded in the
run and checked on resume, each folder's validation loss reported."""

import json
import os

import numpy as np
import pytest
from conftest import TINY_SETTINGS, run_cli, set_args

from banglaslm.checkpoint import load_checkpoint
from banglaslm.cli import main
from banglaslm.data.folder import chars_per_token
from banglaslm.data.loader import BatchSampler
from banglaslm.data.mixture import Mixture, MixtureSampler, open_data, parse_spec
from banglaslm.data.prepare import prepare
from banglaslm.errors import UserError
from banglaslm.report import _data_section


def constant_samplers(values, batch):
    return [BatchSampler(np.full(2000, v, dtype=np.uint16), 16, batch, seed=4) for v in values]


def test_windows_follow_the_weights_and_ranks_split_the_global_batch():
    mix = MixtureSampler(constant_samplers((0, 1, 2), 64), np.array([0.6, 0.3, 0.1]), 64, seed=4)
    drawn = np.concatenate([mix.get(step)[0].numpy() for step in range(60)])
    assert (drawn == drawn[:, :1]).all()  # one folder per window
    shares = np.bincount(drawn[:, 0], minlength=3) / len(drawn)
    assert np.allclose(shares, [0.6, 0.3, 0.1], atol=0.03)
    halves = [MixtureSampler(constant_samplers((0, 1, 2), 64), np.array([0.6, 0.3, 0.1]), 32, seed=4, rank=r,
                             world_size=2).get(9)[0] for r in (0, 1)]
    assert (np.concatenate(halves) == mix.get(9)[0].numpy()).all()
    assert (mix.get(9)[0] == mix.get(9)[0]).all() and not (mix.get(9)[0] == mix.get(10)[0]).all()


def test_specs_and_refusals(tmp_path, data_dir, small_books, capsys):
    assert parse_spec("a/b:0.25") == ("a/b", 0.25) and parse_spec("a:b") == ("a:b", None)
    with pytest.raises(UserError, match="must be a positive number"):
        parse_spec("d:-1")
    with pytest.raises(UserError, match=r"data_dir` entry .*:abc is not a number \('abc'\); write DIR:WEIGHT"):
        parse_spec(f"{data_dir}:abc")  # a folder with a typo for its weight, not a folder named with a colon
    with pytest.raises(UserError, match="give every `data_dir` folder a weight .* or none of them"):
        Mixture([f"{data_dir}:2", str(data_dir)])
    with pytest.raises(UserError, match="is given twice in `data_dir`.*with the sum of its weights"):
        Mixture([f"{data_dir}:0.7", f"{data_dir}/.:0.3"])  # it trained as two folders, dA.0 and dA.1

    assert main(["train", "--data", f"{data_dir}:2", str(data_dir), "--out", str(tmp_path / "r")]) == 2
    assert "give every --data folder a weight" in capsys.readouterr().err
    other = tmp_path / "other"
    prepare([str(small_books[0])], other, vocab_size=300, doc_split="paragraph", progress=False)
    with pytest.raises(UserError, match="another tokenizer"):
        Mixture([str(data_dir), str(other)])
    assert type(open_data([str(data_dir)])).__name__ == "DataFolder"


@pytest.fixture(scope="module")
def second_folder(tmp_path_factory, data_dir, small_books):
    out = tmp_path_factory.mktemp("second") / "verse"
    prepare([str(small_books[1])], out, tokenizer=str(data_dir / "tokenizer.json"), doc_split="paragraph",
            progress=False)
    return out


def test_default_weights_follow_the_training_tokens(data_dir, second_folder):
    mix = Mixture([str(data_dir), str(second_folder)])
    tokens = np.array([json.loads((d / "meta.json").read_text())["splits"]["train"]["tokens"]
                       for d in (data_dir, second_folder)])
    assert np.allclose(mix.weights, tokens / tokens.sum())


def test_a_mixture_recorded_with_its_paths_still_resumes(data_dir, second_folder):
    """Before 2026-12-03 a mixture's identity hashed its folders' paths as given; a run that
    recorded it resumes on the same data."""
    import hashlib

    from banglaslm.data.folder import same_splits

    mix = Mixture([f"{data_dir}:3", f"{second_folder}:1"])
    legacy = hashlib.sha256(json.dumps(mix.meta["mixture"], sort_keys=True).encode()).hexdigest()
    recorded = {split: {**counts, "digest": legacy} for split, counts in mix.meta["splits"].items()}
    assert same_splits(recorded, mix.meta["splits"])
    other = Mixture([f"{data_dir}:1", f"{second_folder}:1"])
    assert not same_splits(recorded, other.meta["splits"]) and not same_splits(mix.meta["splits"], other.meta["splits"])


def test_the_folder_a_split_is_too_short_in_is_named(data_dir, second_folder):
    """"The val split has no stretch of one block" did not say which folder of the mixture."""
    mix = Mixture([str(data_dir), str(second_folder)])
    assert mix.describe().endswith("(each folder's share of the training tokens)")
    with pytest.raises(UserError, match=rf"^{data_dir} \(of the mixture\): the (train|val) split has no stretch"):
        mix.samplers(block_size=10**7, batch_size=2, grad_accum=1, seed=1)


def test_huge_weights_are_normalized_without_overflow(data_dir, second_folder):
    """Weights of 1e308 each summed to infinity: NaN weights, then numpy's traceback mid-run."""
    mix = Mixture([f"{data_dir}:1e308", f"{second_folder}:1e308"])
    assert mix.weights.tolist() == [0.5, 0.5]


def test_training_on_a_mixture_reports_each_folder_and_refuses_other_weights(tmp_path, data_dir,
                                                                            second_folder):
    run = tmp_path / "run"
    settings = {**TINY_SETTINGS, "train.max_iters": 20}
    code, err = run_cli(["train", "--data", f"{data_dir}:3", f"{second_folder}:1", "--out", run,
                         *set_args(settings)])
    assert code == 0, err
    assert f"note: training on a mixture: {data_dir.name} 0.75, verse 0.25\n" in err + "\n"  # said nowhere before
    meta = json.loads((run / "data_meta.json").read_text())
    assert [p["weight"] for p in meta["mixture"]] == [0.75, 0.25]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    splits = {r["split"] for r in records if "split" in r}
    assert splits == {"train", "val", f"val/{data_dir.name}", "val/verse"}
    per_folder = [r for r in records if r.get("split", "").startswith("val/") and r["iter"] == 20]
    assert len(per_folder) == 2 and all(r["bits_per_char"] > 0 for r in per_folder)
    assert per_folder[0]["loss"] != per_folder[1]["loss"]
    # `val` (what the best checkpoint and early stopping follow) is the folders' losses by weight
    for entry in load_checkpoint(run / "checkpoints" / "latest.safetensors").state["history"]:
        assert entry["val"] == pytest.approx(0.75 * entry[f"val/{data_dir.name}"] + 0.25 * entry["val/verse"], rel=1e-9)
    code, err = run_cli(["train", "--data", f"{data_dir}:1", f"{second_folder}:1", "--out", run, "--resume",
                         "--max-iters", "30"])
    assert code == 2 and "is not the data the run" in err and len(err.strip().splitlines()) == 1
    assert f"(it was trained on {data_dir}:0.75 {second_folder}:0.25)" in err
    # the same folders written another way (relative, not absolute) are the same data: it was refused
    relative = [os.path.relpath(folder) for folder in (data_dir, second_folder)]
    code, err = run_cli(["train", "--data", f"{relative[0]}:3", f"{relative[1]}:1", "--out", run, "--resume",
                         "--max-iters", "30"])
    assert code == 0, err


def test_bits_per_char_of_a_mixture_weighs_each_folder_as_its_windows_are_drawn(data_dir, second_folder):
    """A mixture's loss is each folder's loss mixed by weight, so its characters per token must be
    too: pooled by token count instead, a mixture weighted towards its small folder fell outside
    both folders' bits per character."""
    mix = Mixture([f"{data_dir}:1", f"{second_folder}:9"])
    val = [json.loads((d / "meta.json").read_text())["splits"]["val"] for d in (data_dir, second_folder)]
    ratios = np.array([v["chars"] / v["tokens"] for v in val])
    assert chars_per_token(mix.meta["splits"]["val"]) == pytest.approx(0.1 * ratios[0] + 0.9 * ratios[1])
    losses = np.array([3.0, 5.0])  # nats per token in each folder
    folder_bits = losses / np.log(2) / ratios
    mixed = chars_per_token(mix.meta["splits"]["val"])
    mixture_bits = float(np.dot(mix.weights, losses)) / np.log(2) / mixed
    # total bits over total characters of the drawn windows: between the folders' own values
    assert folder_bits.min() <= mixture_bits <= folder_bits.max()
    assert chars_per_token(val[0]) == pytest.approx(ratios[0])
    assert chars_per_token({"tokens": 5}) is None
    # the counts of inputs are every folder's (they were the first folder's alone)
    metas = [json.loads((d / "meta.json").read_text()) for d in (data_dir, second_folder)]
    for key in ("input_bytes", "text_files"):
        assert mix.meta[key] == sum(m[key] for m in metas)
    assert mix.meta["sources"] == metas[0]["sources"] + metas[1]["sources"]
    # the model card shows the weighted ratio (it showed the pooled sums') and names the mixture
    card = "\n".join(_data_section({"data": mix.meta}))
    assert f"| {mixed:.3f} |" in card and "A mixture of 2 data folders" in card
    assert f"`{mix.names[1]}` 0.9" in card and f"| val/{mix.names[0]} |" in card
