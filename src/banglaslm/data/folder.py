"""The data folder: the contract between `prepare` and training, written and read only here.

    DATA_DIR/
      meta.json        format, normalization, tokenizer (file, kind, sha256, vocab size, EOD
                       id), id dtype, per split its counts {documents, tokens, bytes, chars} and
                       its shards in order, each {file, documents, tokens, bytes, chars, sha256},
                       and how the split was made (seed, fraction, doc_split, sources)
      tokenizer.json   the tokenizer the shards were encoded with
      train/*.bin      token ids, one after another; each document followed by EOD, and each
      val/*.bin        shard starting with one (so every document is seen after an EOD)

Version 1 folders (one `train.bin` / `val.bin`, named by the split's "file") still load: they
are read as one shard per split. A folder with a meta.json is complete: `prepare` writes
meta.json last and renames the folder into place.
"""

from __future__ import annotations

import hashlib
import mmap
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..config import is_run_folder
from ..errors import UserError, bad_param
from ..fileio import as_path, atomic_write_json, read_json
from ..text import NORMALIZATION
from ..tokenizer import Tokenizer

DATA_FORMAT = "banglaslm-data"
DATA_FORMAT_VERSION = 2
SPLITS = ("train", "val")
META = "meta.json"


DATA_FILES = {META, "tokenizer.json", "train.bin", "val.bin", *SPLITS, "clean_report.json", "clean_report.md"}


def is_data_folder(path: Path) -> bool:
    """Whether `path` is a data folder and nothing else (what `prepare` may replace)."""
    try:
        return read_json(Path(path) / META).get("format") == DATA_FORMAT and \
            {p.name for p in Path(path).iterdir()} <= DATA_FILES
    except (OSError, ValueError, AttributeError):
        return False


def split_shards(split_meta: dict) -> list[dict]:
    """A split's shards as meta.json lists them; a version 1 split is its one file."""
    if "shards" in split_meta:
        return split_meta["shards"]
    return [{k: split_meta[k] for k in ("file", "documents", "tokens", "bytes", "chars", "sha256") if k in split_meta}]


class DataFolder:
    """A prepared data folder: meta.json checked, tokenizer and memory-mapped shards on demand."""

    def __init__(self, path: str | Path):
        self.path = as_path(path, "data_dir", "a data folder")
        meta_path = self.path / META
        if not meta_path.is_file():
            if is_run_folder(self.path):
                raise bad_param("data_dir", f"{self.path} is a run folder (train wrote it), not a data folder; give "
                                            "`data_dir` a folder `banglaslm prepare` wrote")
            if not self.path.exists():
                raise UserError(f"data folder not found: {self.path}; check the path, or make it with "
                                "`banglaslm prepare`")
            raise UserError(f"{self.path} is not a prepared data folder (no meta.json); run `banglaslm prepare` first")
        try:
            self.meta = read_json(meta_path)
            if self.meta.get("format") != DATA_FORMAT:
                raise ValueError("not a banglaslm data folder")
            if self.meta.get("version", 0) > DATA_FORMAT_VERSION:
                raise ValueError(f"made by a newer banglaslm (version {self.meta['version']})")
            self.dtype = np.dtype(self.meta["dtype"])
            self.tokenizer_sha256 = self.meta["tokenizer"]["sha256"]
            self.vocab_size = int(self.meta["tokenizer"]["vocab_size"])
            self.shards = {split: split_shards(self.meta["splits"][split]) for split in SPLITS}
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{meta_path} is damaged or unsupported ({exc}); prepare the data again") from None

    def _file(self, name: object) -> Path:
        """A file the meta names: a plain name inside this folder or one of its split folders,
        never a path out of it."""
        plain = isinstance(name, str) and re.fullmatch(r"(?:(?:train|val)/)?(?!\.\.?$)[\w.-]+", name)
        if not plain:
            raise UserError(f"{self.path / META} names the file {name!r}, which is not a file of this folder; "
                            "prepare the data again")
        return self.path / name

    @property
    def tokenizer_path(self) -> Path:
        return self._file(self.meta["tokenizer"]["file"])

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_file(self.tokenizer_path)

    def tokens(self, split: str) -> "TokenShards":
        """The split's shards, checked: each one's size against the meta, and (up to SCAN_BYTES
        per shard) every id against the vocabulary and the bytes against the sha256 the meta
        records; larger shards have their ids checked batch by batch as they are read."""
        files = []
        for shard in self.shards[split]:
            path, expected = self._file(shard["file"]), int(shard["tokens"])
            if not path.is_file() or path.stat().st_size != expected * self.dtype.itemsize:
                raise UserError(f"{path} is missing or truncated (expected {expected:,} tokens); prepare the data again")
            tokens = TokenFile(path, self.dtype, self.vocab_size)
            if path.stat().st_size <= SCAN_BYTES:
                _scan(tokens, shard.get("sha256"))
            files.append(tokens)
        return TokenShards(files)

    def samplers(self, block_size: int, batch_size: int, grad_accum: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        """(train, val) `loader.BatchSampler`s of random windows of `block_size` tokens."""
        from .loader import BatchSampler  # the loader reads TokenShards from here

        return tuple(BatchSampler(self.tokens(split), block_size, batch_size, seed, rank, world_size, split)
                     for split in SPLITS)


SCAN_BYTES = 1 << 30  # bins up to this size have every id checked when they are opened
SCAN_CHUNK = 1 << 24  # ids read at a time while checking


def _scan(tokens: TokenFile, sha256: str | None) -> None:
    """Check every id of `tokens` against the vocabulary and its bytes against `sha256` (a bit
    flipped on disk or a bin swapped for another of the same size, that ids alone miss)."""
    digest = hashlib.sha256()
    for start in range(0, len(tokens), SCAN_CHUNK):
        ids = tokens.read(start, min(SCAN_CHUNK, len(tokens) - start))
        tokens.check_ids(start, ids)
        digest.update(ids)
    if sha256 is not None and digest.hexdigest() != sha256:
        raise UserError(f"{tokens.path} has changed since it was prepared (its sha256 is not the one in meta.json); "
                        "prepare the data again")


class TokenFile:
    """A read-only, memory-mapped bin of token ids that does not stay resident.

    After each read the mapping's resident pages are released (`madvise(MADV_DONTNEED)`): the
    kernel reads around every fault, so without it a long run's resident memory grows with the
    corpus (benchmarks/memory_vs_corpus.py). The data stays in the page cache. With
    `vocab_size`, ids read are checked against it (a bin that lies is a UserError, not an
    IndexError deep in training)."""

    def __init__(self, path: Path, dtype: np.dtype, vocab_size: int | None = None):
        self.path, self.dtype, self.vocab_size = path, np.dtype(dtype), vocab_size
        self._map = np.memmap(path, dtype=self.dtype, mode="r")
        self._can_release = hasattr(mmap, "MADV_DONTNEED") and getattr(self._map, "_mmap", None) is not None

    def __len__(self) -> int:
        return len(self._map)

    def _release(self) -> None:
        if self._can_release:
            self._map._mmap.madvise(mmap.MADV_DONTNEED)

    def read(self, start: int = 0, count: int | None = None) -> np.ndarray:
        stop = len(self) if count is None else start + count
        out = np.array(self._map[start:stop])
        self._release()
        return out

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows of `length` tokens beginning at each of `starts`, in one vectorised gather."""
        out = self._map[starts[:, None] + np.arange(length, dtype=np.int64)]
        self._release()
        if self.vocab_size is not None and out.size and int(out.max()) >= self.vocab_size:
            row, col = np.argwhere(out >= self.vocab_size)[0]
            self.check_ids(int(starts[row]) + int(col), out[row, col:col + 1])
        return out

    def check_ids(self, offset: int, ids: np.ndarray) -> None:
        """UserError naming the first id in `ids` (read at `offset`) outside the vocabulary."""
        if self.vocab_size is None or not ids.size or int(ids.max()) < self.vocab_size:
            return
        at = int(np.argmax(ids >= self.vocab_size))
        raise UserError(f"{self.path} holds token id {int(ids[at])} at position {offset + at:,}, but the vocabulary "
                        f"has {self.vocab_size:,} tokens: the file is damaged; prepare the data again")


class TokenShards:
    """A split's shards read as one sequence of window starts: a window of `length` tokens
    never crosses a shard's end, and each shard offers windows in proportion to its tokens.
    With one shard the starts are 0 .. len - length, as a single bin's always were."""

    def __init__(self, files: list[TokenFile]):
        self.files = files
        self.sizes = np.array([len(f) for f in files], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def starts(self, length: int) -> int:
        """How many windows of `length` tokens there are (0 when every shard is shorter)."""
        return int(np.maximum(self.sizes - length + 1, 0).sum())

    def windows(self, index: np.ndarray, length: int) -> np.ndarray:
        """Rows of `length` tokens for window numbers `index` (each in [0, starts(length)))."""
        counts = np.maximum(self.sizes - length + 1, 0)
        ends = np.cumsum(counts)
        shard = np.searchsorted(ends, index, side="right")
        local = index - (ends - counts)[shard]
        out = np.empty((len(index), length), dtype=self.files[0].dtype if self.files else np.int64)
        for s in np.unique(shard):
            rows = shard == s
            out[rows] = self.files[s].windows(local[rows], length)
        return out

    def read(self) -> np.ndarray:
        """Every id, shard after shard (for small splits: the whole split is in memory)."""
        return np.concatenate([f.read() for f in self.files]) if self.files else np.zeros(0, np.int64)


ID_DTYPES = ("auto", "uint16", "uint32")


def id_dtype(vocab_size: int, dtype: str) -> type:
    """The bins' id type: "auto" (uint16 when the vocabulary fits), "uint16" or "uint32"."""
    if dtype == "auto":
        return np.uint16 if vocab_size <= 2**16 else np.uint32
    if dtype == "uint16" and vocab_size > 2**16:
        raise bad_param("dtype", f"uint16 cannot hold this vocabulary: it has {vocab_size:,} tokens, too many for "
                                 "uint16 (max 65,536); use uint32 or a smaller `vocab_size`")
    return np.uint16 if dtype == "uint16" else np.uint32


class ShardWriter:
    """Writes one split's documents into shards `SPLIT/{prefix}-{k:05d}.bin` of at most
    `shard_tokens` ids each (a longer document gets a shard of its own), each starting with
    EOD; counts and hashes what went in. Shards are written under a temporary name and
    renamed when complete, so a killed writer leaves no file that looks finished."""

    def __init__(self, folder: Path, split: str, prefix: str, eod_id: int, dtype: type, shard_tokens: int):
        self.folder, self.split, self.prefix = Path(folder), split, prefix
        self.eod, self.dtype, self.shard_tokens = np.array([eod_id], dtype=dtype), dtype, shard_tokens
        self.shards: list[dict] = []
        self._fh = None
        (self.folder / split).mkdir(parents=True, exist_ok=True)

    def add(self, documents: list[tuple[str, list[int]]]) -> None:
        """Append (normalized text, ids) documents, each followed by EOD."""
        for text, ids in documents:
            if self._fh is None or (self.shards[-1]["tokens"] + len(ids) + 1 > self.shard_tokens
                                    and self.shards[-1]["documents"]):
                self._open()
            self._write(np.append(np.asarray(ids, dtype=self.dtype), self.eod))
            shard = self.shards[-1]
            shard["documents"] += 1
            shard["chars"] += len(text)
            shard["bytes"] += len(text.encode("utf-8"))

    def _open(self) -> None:
        self._finish()
        name = f"{self.split}/{self.prefix}-{len(self.shards):05d}.bin"
        self.shards.append({"file": name, "documents": 0, "tokens": 0, "bytes": 0, "chars": 0})
        self._path, self._hash = self.folder / name, hashlib.sha256()
        self._fh = open(self._path.with_suffix(".tmp"), "wb")
        self._write(self.eod)

    def _write(self, ids: np.ndarray) -> None:
        data = ids.tobytes()
        self._fh.write(data)
        self._hash.update(data)
        self.shards[-1]["tokens"] += len(ids)

    def _finish(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._path.with_suffix(".tmp").replace(self._path)
            self.shards[-1]["sha256"] = self._hash.hexdigest()
            self._fh = None

    def close(self) -> list[dict]:
        """Finish the last shard; the shards written, in order."""
        self._finish()
        return self.shards


def chars_per_token(counts: dict) -> float | None:
    """Characters per token of one split's counts in meta.json: its "chars_per_token" where
    recorded (a mixture's, each folder's ratio weighted as its windows are drawn), else chars
    over tokens; None for a folder that does not count characters."""
    if counts.get("chars_per_token"):
        return counts["chars_per_token"]
    return counts["chars"] / counts["tokens"] if counts.get("chars") and counts.get("tokens") else None


def split_stats(shards: list[dict]) -> dict:
    """A split's entry in meta.json: its totals, a digest of its shards' digests, its shards."""
    totals = {k: sum(s[k] for s in shards) for k in ("documents", "tokens", "bytes", "chars")}
    digest = hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()
    return {**totals, "digest": digest, "shards": shards}


def write_meta(folder: Path, tokenizer: Tokenizer, dtype: type, splits: dict, split: dict[str, Any]) -> dict:
    """Write meta.json (last: it marks the folder complete) beside the tokenizer; the meta."""
    meta = {
        "format": DATA_FORMAT, "version": DATA_FORMAT_VERSION, "normalization": NORMALIZATION,
        "tokenizer": {"file": "tokenizer.json", "kind": tokenizer.kind, "sha256": tokenizer.sha256,
                      "vocab_size": tokenizer.vocab_size, "eod_id": tokenizer.eod_id},
        "dtype": np.dtype(dtype).name, "splits": splits, "split_by": "document", **split,
    }
    atomic_write_json(Path(folder) / META, meta)
    return meta


IDENTITY_KEYS = ("tokens", "documents", "chars", "bytes", "sha256", "digest")


def same_splits(recorded: dict, current: dict) -> bool:
    """Whether two meta.json "splits" describe the same data: equal in every identity key both
    record (a folder prepared before bins had checksums compares by its counts alone); a recorded
    mixture digest may equal the current one's older form ("digest_alias")."""
    for split in SPLITS:
        a, b = recorded.get(split) or {}, current.get(split) or {}
        shared = [k for k in IDENTITY_KEYS if k in a and k in b]
        if not shared or any(a[k] != b[k] and not (k == "digest" and a[k] == b.get("digest_alias"))
                             for k in shared):
            return False
    return True
