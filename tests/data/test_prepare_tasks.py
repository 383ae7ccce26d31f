"""prepare as datatrove tasks: shards, one process or several, several machines (ranks),
and a rerun that completes only the tasks not done."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from banglaslm.data import prepare_steps
from banglaslm.data.folder import DataFolder
from banglaslm.data.prepare import prepare
from banglaslm.errors import UserError

OPTIONS = {"vocab_size": 400, "doc_split": "paragraph", "shard_tokens": 3000, "val_fraction": 0.1}


def documents(folder: Path, split: str) -> list[list[int]]:
    """Each document's ids, in the order the split's shards hold them."""
    data = DataFolder(folder)
    eod = data.tokenizer().eod_id
    docs = []
    for shard in data.tokens(split).files:
        ids = shard.read().tolist()
        assert ids[0] == eod and ids[-1] == eod  # each shard starts with EOD, each document ends with one
        cut = [i for i, t in enumerate(ids) if t == eod]
        docs += [ids[a + 1:b] for a, b in zip(cut, cut[1:])]
    return docs


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "banglaslm", "prepare", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


@pytest.fixture(scope="module")
def one_task(tmp_path_factory, small_books) -> Path:
    out = tmp_path_factory.mktemp("one") / "d"
    prepare([str(p) for p in small_books], out, progress=False, **OPTIONS)
    return out


def test_shards_hold_whole_documents_up_to_the_size(one_task):
    meta = DataFolder(one_task).meta
    for split in ("train", "val"):
        shards = meta["splits"][split]["shards"]
        assert sum(s["tokens"] for s in shards) == meta["splits"][split]["tokens"]
        assert sum(s["documents"] for s in shards) == meta["splits"][split]["documents"] == len(documents(one_task, split))
        for s in shards:  # over the size only when one document alone is longer
            assert s["tokens"] <= OPTIONS["shard_tokens"] or s["documents"] == 1
            assert (one_task / s["file"]).stat().st_size == 2 * s["tokens"]
    assert len(meta["splits"]["train"]["shards"]) > 3


def test_two_ranks_equal_two_tasks_in_one_process_and_one_task(tmp_path, small_books, one_task):
    inputs = [str(p) for p in small_books]
    flags = ["--vocab-size", "400", "--doc-split", "paragraph", "--shard-tokens", "3000", "--val-fraction", "0.1",
             "--tasks", "2"]
    ranks = [cli(*inputs, "--out", str(tmp_path / "ranks"), *flags, "--task-rank", str(r)) for r in (1, 0)]
    outputs = [p.communicate(timeout=300)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outputs
    assert "task 1 of" in outputs[0] and "prepared" in outputs[1]
    prepare(inputs, tmp_path / "tasks", workers=1, tasks=2, progress=False, **OPTIONS)
    assert files(tmp_path / "ranks") == files(tmp_path / "tasks")  # byte-identical shards, tokenizer and meta
    assert not list(tmp_path.glob(".*.prepare"))  # the work folders are gone
    two = DataFolder(tmp_path / "tasks")
    assert two.tokenizer_sha256 == DataFolder(one_task).tokenizer_sha256
    assert len(two.meta["splits"]["train"]["shards"]) > len(DataFolder(one_task).meta["splits"]["train"]["shards"]) - 2
    for split in ("train", "val"):
        assert documents(tmp_path / "tasks", split) == documents(one_task, split)


def test_two_workers_equal_one(tmp_path, small_books):
    inputs = [str(p) for p in small_books]
    prepare(inputs, tmp_path / "w1", workers=1, tasks=3, progress=False, **OPTIONS)
    prepare(inputs, tmp_path / "w2", workers=2, tasks=3, progress=False, **OPTIONS)
    assert files(tmp_path / "w1") == files(tmp_path / "w2")


def test_rerun_completes_only_the_missing_tasks(tmp_path, small_books, one_task, monkeypatch):
    inputs = [str(p) for p in small_books]
    read_by = []
    real_read, real_encode = prepare_steps.ReadInputs.run, prepare_steps.EncodeShards.run

    def read(self, data=None, rank=0, world_size=1):
        read_by.append(rank)
        yield from real_read(self, data, rank, world_size)

    def encode_dies_in_task_1(self, data=None, rank=0, world_size=1):
        if rank == 1:
            writer = prepare_steps.ShardWriter(self.work, "train", "00001", 0, np.uint16, 100)
            writer.add([("half", [5, 6, 7])])  # a shard begun, never finished
            raise KeyboardInterrupt  # killed mid-way
        return real_encode(self, data, rank, world_size)

    monkeypatch.setattr(prepare_steps.ReadInputs, "run", read)
    monkeypatch.setattr(prepare_steps.EncodeShards, "run", encode_dies_in_task_1)
    with pytest.raises(KeyboardInterrupt):
        prepare(inputs, tmp_path / "d", tasks=2, progress=False, **OPTIONS)
    assert not (tmp_path / "d").exists() and read_by == [0, 1]
    monkeypatch.setattr(prepare_steps.EncodeShards, "run", real_encode)
    prepare(inputs, tmp_path / "d", tasks=2, progress=False, **OPTIONS)
    assert read_by == [0, 1]  # the read phase was done: nothing read again
    listed = {s["file"] for split in ("train", "val") for s in DataFolder(tmp_path / "d").shards[split]}
    assert listed == {str(p.relative_to(tmp_path / "d")) for p in (tmp_path / "d").rglob("*.bin")}
    assert not list((tmp_path / "d").rglob("*.tmp"))
    for split in ("train", "val"):
        assert documents(tmp_path / "d", split) == documents(one_task, split)


def test_ranks_refuse_a_plan_that_differs(tmp_path, small_books):
    work = tmp_path / ".d.prepare"
    work.mkdir()
    (work / "plan.json").write_text(json.dumps({"other": 1}))
    with pytest.raises(UserError, match="unfinished prepare with other inputs"):
        prepare([str(small_books[0])], tmp_path / "d", tasks=2, task_rank=1, progress=False)
    with pytest.raises(UserError, match="task_rank must be in"):
        prepare([str(small_books[0])], tmp_path / "d", tasks=2, task_rank=2, progress=False)


def test_a_task_that_fails_stops_the_other_machines(tmp_path):
    """Task 0 refused the text ("all ... documents are the same text") and task 1, on another
    machine, waited forever for its choice: it stops, naming task 0's error."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.txt", "b.txt"):
        (src / name).write_text("একই লেখা।\n", encoding="utf-8")
    flags = ["--out", str(tmp_path / "d"), "--tasks", "2", "--tokenizer", "char", "--doc-split", "line"]
    other = cli(str(src), *flags, "--task-rank", "1")
    with pytest.raises(UserError, match="are the same text"):
        prepare([str(src)], tmp_path / "d", tasks=2, task_rank=0, tokenizer="char", doc_split="line",
                progress=False)
    output = other.communicate(timeout=120)[0]
    assert other.returncode == 2, output
    assert "task 0 of this prepare failed on its machine: all 2 documents are the same text" in output


def test_a_task_that_waits_while_task_0_finishes_the_folder_returns(tmp_path, small_books, monkeypatch):
    """Task 1 slept between its checks for the encode summaries; task 0 saw them all, finished the
    folder and removed the work folder with the summaries in it: task 1 waited forever."""
    import banglaslm.data.prepare as module

    inputs = [str(small_books[0])]
    flags = ["--vocab-size", "400", "--doc-split", "paragraph", "--tasks", "2", "--task-rank", "0"]
    task0 = cli(*inputs, "--out", str(tmp_path / "d"), *flags)
    real_run_tasks, real_sleep, naps = module.run_tasks, module.time.sleep, []

    def run_tasks(steps, tasks, logs, ranks, workers, command):  # task 0 finishes before task 1 looks
        real_run_tasks(steps, tasks, logs, ranks, workers, command)
        if logs.name == "encode":
            assert task0.wait(timeout=300) == 0, task0.communicate()[0]

    def sleep(seconds):
        naps.append(seconds)
        assert len(naps) < 1000, "task 1 waited on after task 0 had finished"
        real_sleep(0.05)

    monkeypatch.setattr(module, "run_tasks", run_tasks)
    monkeypatch.setattr(module.time, "sleep", sleep)
    result = prepare(inputs, tmp_path / "d", tasks=2, task_rank=1, progress=False, vocab_size=400,
                     doc_split="paragraph")
    assert result.meta is None and result.input_bytes > 0
    assert result.summary().endswith("task 0 has finished the folder")
    assert DataFolder(tmp_path / "d").meta["splits"]["train"]["tokens"] > 0


def test_a_task_run_again_after_the_folder_is_finished_is_refused(tmp_path, small_books):
    """A scheduler that retried task 1 after task 0 had finished the folder left it waiting for
    the others forever, beside a new work folder."""
    prepare([str(small_books[0])], tmp_path / "d", tasks=2, progress=False, **OPTIONS)
    with pytest.raises(UserError, match="already a finished data folder .* delete it first"):
        prepare([str(small_books[0])], tmp_path / "d", tasks=2, task_rank=1, progress=False, **OPTIONS)
    assert not (tmp_path / ".d.prepare").exists()


def test_tokenizer_sample_is_bounded_and_seeded(tmp_path, small_books):
    inputs = [str(p) for p in small_books]
    small = {**OPTIONS, "tokenizer_sample": 20_000}
    a = prepare(inputs, tmp_path / "a", progress=False, **small)
    b = prepare(inputs, tmp_path / "b", tasks=3, progress=False, **small)
    c = prepare(inputs, tmp_path / "c", progress=False, seed=5, **small)
    assert a.meta["tokenizer"]["sha256"] == b.meta["tokenizer"]["sha256"] != c.meta["tokenizer"]["sha256"]
    sample = prepare_steps.bottom_sample([[h, 10] for h in (5, 1, 9, 3, 7)], 25)
    assert [h for h, _ in sample] == [1, 3, 5]  # the smallest hashes, until the budget is reached


def spool(work: Path, texts: list[str], sample_chars: int) -> tuple[dict, np.ndarray]:
    from datatrove.data import Document

    step = prepare_steps.Spool(work, seed=1, val_fraction=0.1, sample_chars=sample_chars)
    list(step.run(Document(text=t, id=str(i)) for i, t in enumerate(texts)))
    return (json.loads(prepare_steps.summary_path(work, "read", 0).read_text()),
            np.load(prepare_steps.sample_path(work, 0)))


def test_a_read_task_keeps_a_compact_sample_and_none_without_bpe(tmp_path):
    """A corpus of short lines made each task keep every training document as a candidate in
    Python lists and an indented JSON summary (1.7 GB of memory, a 131 MB summary for 2 M lines),
    even with a tokenizer given: the sample is uint64 rows beside the summary, pruned to the
    budget as it goes, and not kept at all when no BPE is trained."""
    texts = [f"ছোট লাইন {i}" for i in range(3 * prepare_steps._Sample.PRUNE_EVERY)]
    summary, rows = spool(tmp_path / "bpe", texts, sample_chars=5_000)
    assert "sample" not in summary and rows.dtype == np.uint64 and rows.shape[1] == 4
    assert rows[:, 1].sum() >= 5_000 and rows[:-1, 1].sum() < 5_000  # the fewest documents that hold the budget
    assert (np.diff(rows[:, 0].astype(np.float64)) >= 0).all()  # smallest sample hashes first
    every = [[prepare_steps.doc_hash(t, 1, "sample"), len(t)] for t in texts
             if prepare_steps.doc_hash(t, 1, "split") >= prepare_steps.val_threshold(0.1)]
    assert rows[:, 0].tolist() == [h for h, _ in prepare_steps.bottom_sample(every, 5_000)[:, :2].tolist()]
    _, none = spool(tmp_path / "given", texts[:100], sample_chars=0)
    assert none.shape == (0, 4)


def test_split_follows_the_text_not_the_position(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    texts = [f"নথি {i}: বাংলা ভাষার একটি ছোট বাক্য।" for i in range(60)]
    (src / "a.txt").write_text("\n".join(texts), encoding="utf-8")
    (src / "b.txt").write_text("\n".join(reversed(texts + texts[:10])), encoding="utf-8")  # duplicates too
    d = prepare([str(src)], tmp_path / "d", tokenizer="char", doc_split="line", val_fraction=0.2, progress=False)
    tok = DataFolder(tmp_path / "d").tokenizer()
    val = {tok.decode(doc) for doc in documents(tmp_path / "d", "val")}
    train = {tok.decode(doc) for doc in documents(tmp_path / "d", "train")}
    assert val and train and not val & train  # copies of a text never straddle the split
    assert 4 <= len(val) <= 24 and d.meta["splits"]["val"]["documents"] >= len(val)


def test_prepare_with_clean_drops_copies_and_keeps_the_report(tmp_path, small_books, capsys):
    from banglaslm.cli import main

    src = tmp_path / "src.jsonl"
    paras = [p for p in small_books[3].read_text(encoding="utf-8").split("\n\n") if len(p) > 200][:40]
    rows = paras + paras[:10] + ["This paragraph is English text, not Bangla at all, and cleaning drops it. " * 3]
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in rows), encoding="utf-8")
    thresholds = ["--min-words", "5", "--min-stop-words", "0", "--min-avg-word-length", "2", "--top-ngrams", "",
                  "--dup-ngrams", "", "--dup-line-frac", "1"]
    assert main(["prepare", str(src), "--out", str(tmp_path / "d"), "--clean", "--vocab-size", "300",
                 "--val-fraction", "0.1", *thresholds]) == 0
    meta = DataFolder(tmp_path / "d").meta
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == len(set(paras))
    assert meta["cleaning"] == {"documents": len(rows), "empty_documents": 0, "kept": len(set(paras))}
    assert f"cleaned first: kept {len(set(paras))} of {len(rows)} documents" in capsys.readouterr().out
    report = json.loads((tmp_path / "d" / "clean_report.json").read_text())
    assert (tmp_path / "d" / "clean_report.md").exists() and "exact" in json.dumps(report)
    assert main(["prepare", str(src), "--out", str(tmp_path / "e"), "--clean", "--tasks", "2", "--task-rank", "0"]) == 2


def test_a_tasks_rate_leaves_out_its_wait_for_the_others():
    """Task 1 of several machines said "done in 69.9 s (3.1 kB/s)", its minute of waiting counted."""
    from banglaslm.data.prepare import PrepareResult

    line = PrepareResult(Path("d"), None, seconds=70.0, input_bytes=10_000_000, task_rank=1, waited=60.0).summary()
    assert "done in 70.0 s (1.00 MB/s of normalized text; 60.0 s of it waiting for other tasks)" in line
    assert "waiting" not in PrepareResult(Path("d"), None, seconds=10.0, input_bytes=10_000_000, task_rank=1).summary()
