"""The whole pipeline through the command line on a slice of real Bangla literature:
prepare → train → eval → generate, checking what each stage hands to the next."""

import json
import subprocess
import sys

import pytest
from conftest import TINY_SETTINGS, set_args


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "banglaslm", *map(str, args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.slow
def test_prepare_train_eval_generate(tmp_path, literature):
    books = [literature / n for n in ("SukumarRay_Poetry_AbolTabol.txt", "SukumarRay_Prose_Hajabarala.txt",
                                      "RabindranathTagore_Songs_Swadesh.txt")]
    held_out = literature / "SukumarRay_Poetry_KhaiKhai.txt"
    data, run = tmp_path / "data", tmp_path / "run"
    summary = cli("prepare", *books, "--out", data, "--vocab-size", "1000", "--doc-split", "paragraph")
    assert "characters/token" in summary
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    assert meta["splits"]["val"]["documents"] > 0 and meta["normalization"] == "bn-1"

    settings = {**TINY_SETTINGS, "train.max_iters": 150, "train.eval_interval": 50, "model.n_embd": 64,
                "model.block_size": 64, "train.batch_size": 8}
    out = cli("train", "--data", data, "--out", run, *set_args(settings))
    assert "best val" in out
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"split"' in l]
    val = [e["loss"] for e in evals if e["split"] == "val"]
    assert val[-1] < val[0] - 1.0

    rows = [json.loads(l) for l in cli("eval", run, "--text", held_out, "--json").splitlines()]
    import math

    from banglaslm.text import normalize

    alphabet = len(set(normalize(held_out.read_text(encoding="utf-8"))))
    # Well below a uniform guess over the held-out text's own alphabet (about 6.5 bits).
    assert rows[0]["bits_per_char"] < math.log2(alphabet) - 1.5
    g = json.loads(cli("generate", run, "--prompt", "আমার", "--max-new-tokens", "40", "--seed", "0", "--json"))
    assert g["tokens"] > 0 and "\ufffd" not in g["text"]
    bengali = sum("\u0980" <= c <= "\u09ff" for c in g["text"])
    assert bengali > len(g["text"]) * 0.4  # it writes Bangla
