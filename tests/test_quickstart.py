"""The README's main job, shortened: `quickstart` prepares the embedded corpus, trains the tiny
preset (with the quick start's own dropout), evaluates on held-out documents and generates;
run again, it continues the run instead of starting over."""

import dataclasses
import json

import pytest

from banglaslm.config import build_config
from banglaslm.errors import UserError
from banglaslm.quickstart import (
    PROMPTS,
    QUICKSTART_OVERRIDES,
    QUICKSTART_VOCAB,
    quickstart,
)


def test_quickstart_end_to_end_then_continues(tmp_path):
    lines: list[str] = []
    out = quickstart(tmp_path / "qs", max_iters=60, say=lines.append, progress=False)
    run = tmp_path / "qs" / "run"
    saved = json.loads((run / "config.json").read_text())
    expected = dataclasses.asdict(build_config("tiny", overrides=QUICKSTART_OVERRIDES).model)
    assert {**saved["model"], "vocab_size": 0} == expected  # the tiny preset + the quick start's dropout
    assert saved["model"]["dropout"] == QUICKSTART_OVERRIDES["model.dropout"] != build_config("tiny").model.dropout
    assert out["prepare"]["tokenizer"]["vocab_size"] == QUICKSTART_VOCAB
    assert out["train"].iterations == 60
    ev = out["eval"]
    assert ev.tokens > 1000 and 0 < ev.bits_per_char < 12  # held-out documents, scored
    assert len(out["samples"]) == len(PROMPTS)
    assert [line.split(" ")[0] for line in lines if line[:2] in ("1/", "2/", "3/", "4/")] == ["1/4", "2/4", "3/4", "4/4"]
    again = quickstart(tmp_path / "qs", max_iters=70, say=lines.append, progress=False)
    assert again["train"].iterations == 70  # resumed from step 60, not retrained from 0
    steps = [json.loads(l)["iter"] for l in (run / "metrics.jsonl").read_text().splitlines() if "lr" in l]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_quickstart_writes_only_into_its_own_folder(tmp_path):
    """A folder of other files (a data folder, a run folder, the user's own) is refused before
    any work, and left as it was."""
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(UserError, match="not a banglaslm quick-start folder"):
        quickstart(other, max_iters=2, say=lambda line: None, progress=False)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_ctrl_c_says_to_run_the_quick_start_again_which_continues(tmp_path):
    """Ctrl-C advised "the same command plus --resume", a flag quickstart does not have: it
    continues by itself when run again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    metrics = tmp_path / "qs" / "run" / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "banglaslm", "quickstart", "--out", str(tmp_path / "qs"),
                             "--max-iters", "5000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].endswith("; run the same command again to continue"), err
    assert "--resume" not in err and "Traceback" not in err
