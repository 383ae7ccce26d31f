"""The steps of `prepare` as datatrove pipeline steps, so one machine's workers or many
machines' tasks run them (datatrove schedules the tasks and skips those already completed).

Task r of T reads a contiguous block of the inputs, so the tasks' outputs in rank order keep
the input order, and writes only files named by its rank: its normalized documents (`spool/`)
and a summary (`read/`) in the read phase; its shards and a summary (`encode/`) in the encode
phase. Summaries are written last, so a killed task leaves nothing that counts as done.

Which split a document goes to, and whether it is in the tokenizer's sample, are functions of
its normalized text and the seed alone (`doc_hash`), so they do not depend on how the corpus
was cut into tasks, and exact duplicates never straddle train and validation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from tqdm import tqdm

from ..fileio import atomic_path, atomic_write_json, read_json
from ..text import normalize
from ..tokenizer import Coverage, Tokenizer, iter_chunks
from .folder import SPLITS, ShardWriter
from .sources import Source, iter_documents

ENCODE_BATCH_CHARS = 1_000_000
HASH_RANGE = 2**64


def doc_hash(text: str, seed: int, purpose: str) -> int:
    """A seeded 64-bit hash of a normalized document, uniform in [0, 2**64)."""
    key = f"{seed}:{purpose}".encode()
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest(), "little")


def task_block(n_items: int, rank: int, world_size: int) -> slice:
    """Task `rank`'s contiguous share of `n_items` inputs (shares differ by at most one)."""
    return slice(rank * n_items // world_size, (rank + 1) * n_items // world_size)


def spool_path(work: Path, rank: int) -> Path:
    return Path(work) / "spool" / f"{rank:05d}.jsonl"


def summary_path(work: Path, phase: str, rank: int) -> Path:
    return Path(work) / phase / f"{rank:05d}.json"


class ReadInputs(PipelineStep):
    """This task's block of the inputs, one `Document` per document, not yet normalized."""

    name, type = "inputs", "📖 - READER"

    def __init__(self, sources: list[Source], text_column: str | None, doc_split: str, progress: bool):
        super().__init__()
        self.sources, self.text_column, self.doc_split, self.progress = sources, text_column, doc_split, progress

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        block = task_block(len(self.sources), rank, world_size)
        documents = ((index, text) for index in range(block.start, block.stop)
                     for text in iter_documents([self.sources[index]], self.text_column, self.doc_split))
        for i, (index, text) in enumerate(tqdm(documents, desc="reading", unit="doc", disable=not self.progress)):
            yield Document(text=text, id=f"{rank}/{i}", metadata={"source": index})


class Normalize(PipelineStep):
    """Normalizes each document (`text.normalize`); those left empty go on, for `Spool` to count."""

    name, type = "normalize", "✂️ - FORMAT"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            doc.text = normalize(doc.text)
            yield doc


class Spool(PipelineStep):
    """Writes the task's normalized documents, one JSON string per line, and its summary:
    counts (documents left empty by normalization are counted, not written), the inputs that
    gave text, the characters seen, the documents with the smallest and largest split hash, and
    the candidates for the tokenizer's sample (of the documents that validation's threshold
    leaves to training, those with the smallest sample hashes holding `sample_chars`
    characters; the corpus's sample is drawn from the tasks' candidates)."""

    name, type = "spool", "💽 - WRITER"

    def __init__(self, work: Path, seed: int, val_fraction: float, sample_chars: int):
        super().__init__()
        self.work, self.seed, self.sample_chars = Path(work), seed, sample_chars
        self.threshold = val_threshold(val_fraction)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = spool_path(self.work, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        summary = {"documents": 0, "empty": 0, "bytes": 0, "lowest": None, "highest": None}
        chars: set[str] = set()
        with_text: set[int] = set()  # the inputs (their index) that gave a document
        sample = _Sample(self.sample_chars)  # a budget of 0: no tokenizer is trained here
        with open(path, "wb") as fh:
            for doc in data:
                if not doc.text:  # an empty row, or one of only spaces and invisible characters
                    summary["empty"] += 1
                    continue
                h, offset = doc_hash(doc.text, self.seed, "split"), fh.tell()
                if summary["lowest"] is None or h < summary["lowest"][0]:
                    summary["lowest"] = [h, offset]
                if summary["highest"] is None or h > summary["highest"][0]:
                    summary["highest"] = [h, offset]
                if h >= self.threshold and self.sample_chars:
                    sample.offer([doc_hash(doc.text, self.seed, "sample"), len(doc.text), offset, h])
                fh.write((json.dumps(doc.text, ensure_ascii=False) + "\n").encode("utf-8"))
                summary["documents"] += 1
                summary["bytes"] += len(doc.text.encode("utf-8"))
                if "source" in doc.metadata:  # set by ReadInputs
                    with_text.add(doc.metadata["source"])
                chars.update(doc.text)
        with atomic_path(sample_path(self.work, rank)) as tmp, open(tmp, "wb") as out:
            np.save(out, sample.candidates(), allow_pickle=False)
        summary.update(chars="".join(sorted(chars)), sources_with_text=sorted(with_text))
        atomic_write_json(summary_path(self.work, "read", rank), summary)  # last: the task is done
        return
        yield


class _Sample:
    """The documents with the smallest hashes, fewest first, holding at least `budget`
    characters (a bottom-k sample measured in characters: the same documents whatever order
    they come in, and any task's share of the corpus's sample is among its own). Kept as uint64
    rows [hash, characters, offset, split hash], pruned every PRUNE_EVERY offers: 32 bytes per
    candidate (Python lists of them took a gigabyte for a corpus of short lines)."""

    PRUNE_EVERY = 1 << 16

    def __init__(self, budget: int):
        self.budget, self.kept, self.new = budget, np.empty((0, 4), dtype=np.uint64), []

    def offer(self, candidate: list[int]) -> None:
        """Offer [hash, characters, offset, split hash] of one document."""
        self.new.append(candidate)
        if len(self.new) >= self.PRUNE_EVERY:
            self._prune()

    def _prune(self) -> None:
        rows = np.array(self.new, dtype=np.uint64).reshape(len(self.new), 4)
        self.kept, self.new = bottom_sample(np.concatenate([self.kept, rows]), self.budget), []

    def candidates(self) -> np.ndarray:
        """The documents kept, as rows, smallest hash first."""
        self._prune()
        return self.kept


def bottom_sample(candidates, budget: int) -> np.ndarray:
    """Of [hash, characters, ...] rows, those with the smallest hashes (ties: the next columns)
    holding at least `budget` characters (all of them when they hold fewer), in that order."""
    rows = np.asarray(candidates, dtype=np.uint64)
    if not len(rows):
        return rows
    rows = rows[np.lexsort(rows.T[::-1])]
    before = np.cumsum(rows[:, 1]) - rows[:, 1]  # characters of the rows before each
    return rows[before < budget]


def sample_path(work: Path, rank: int) -> Path:
    """A read task's candidates for the tokenizer's sample (rows of `_Sample`)."""
    return summary_path(work, "read", rank).with_suffix(".sample.npy")


def read_spool(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def read_spooled(path: Path, offsets: list[int]) -> Iterator[str]:
    """The documents starting at `offsets` of a spool file, in that order."""
    with open(path, "rb") as fh:
        for offset in offsets:
            fh.seek(offset)
            yield json.loads(fh.readline())


def val_threshold(val_fraction: float) -> int:
    """The split hash under which a document goes to validation."""
    return int(val_fraction * HASH_RANGE)


@dataclass(frozen=True)
class SplitRule:
    """Validation holds the documents whose split hash is under `threshold` (`val_threshold`),
    and always the one with the smallest hash; training always the one with the largest. So
    both splits hold a document whenever the corpus holds two different ones."""

    threshold: int
    lowest: int
    highest: int

    def is_val(self, h: int) -> bool:
        return h == self.lowest or (h < self.threshold and h != self.highest)


class EncodeShards(PipelineStep):
    """Encodes the task's spooled documents into its shards of each split (`ShardWriter`,
    files prefixed by the rank) and writes the task's summary: the shards and the tokenizer's
    coverage per split."""

    name, type = "encode", "🔢 - TOKENIZER"

    def __init__(self, work: Path, seed: int, dtype: str, shard_tokens: int, progress: bool):
        super().__init__()
        self.work, self.seed, self.dtype, self.shard_tokens, self.progress = Path(work), seed, dtype, shard_tokens, progress

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        tok = Tokenizer.from_file(self.work / "tokenizer.json")
        rule = SplitRule(**{k: read_json(self.work / "split.json")[k] for k in ("threshold", "lowest", "highest")})
        for split in SPLITS:  # what an earlier, killed attempt at this task wrote
            for stale in (self.work / split).glob(f"{rank:05d}-*"):
                stale.unlink()
        writers = {s: ShardWriter(self.work, s, f"{rank:05d}", tok.eod_id, np.dtype(self.dtype).type,
                                  self.shard_tokens) for s in SPLITS}
        coverage = {s: Coverage() for s in SPLITS}
        documents = read_spool(spool_path(self.work, rank))
        bar = tqdm(desc="encoding", unit="doc", disable=not self.progress)
        for batch in iter_chunks(documents, max_chars=ENCODE_BATCH_CHARS):
            is_val = [rule.is_val(doc_hash(doc, self.seed, "split")) for doc in batch]
            for split in SPLITS:
                docs = [doc for doc, v in zip(batch, is_val) if v == (split == "val")]
                writers[split].add(list(zip(docs, tok.encode_batch(docs, coverage[split]))))
            bar.update(len(batch))
        bar.close()
        atomic_write_json(summary_path(self.work, "encode", rank), {
            "shards": {s: w.close() for s, w in writers.items()},
            "coverage": {s: c.to_dict(top=1000) for s, c in coverage.items()}})
        return
        yield
