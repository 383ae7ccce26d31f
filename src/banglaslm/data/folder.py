"""The data folder: the contract between `prepare` and training, written and read only here.

    DATA_DIR/
      meta.json        format, normalization, tokenizer (file, kind, sha256, vocab size, EOD
                       id), id dtype, per split {file, documents, tokens, bytes, chars}, and
                       how the split was made (seed, fraction, doc_split, sources)
      tokenizer.json   the tokenizer the bins were encoded with
      train.bin        token ids, one after another; each document followed by EOD, and the
      val.bin          file starting with one (so every document is seen after an EOD)

A folder with a meta.json is complete: `prepare` builds it under a temporary name (meta.json
written last) and renames it into place.
"""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError, bad_param
from ..fileio import atomic_write_json, read_json
from ..text import NORMALIZATION
from ..tokenizer import Tokenizer

DATA_FORMAT = "banglaslm-data"
DATA_FORMAT_VERSION = 1
SPLITS = ("train", "val")
META = "meta.json"


DATA_FILES = {META, "tokenizer.json", "train.bin", "val.bin"}


def is_data_folder(path: Path) -> bool:
    """Whether `path` is a data folder and nothing else (what `prepare` may replace)."""
    try:
        return read_json(Path(path) / META).get("format") == DATA_FORMAT and \
            {p.name for p in Path(path).iterdir()} <= DATA_FILES
    except (OSError, ValueError, AttributeError):
        return False


class DataFolder:
    """A prepared data folder: meta.json checked, tokenizer and memory-mapped bins on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / META
        if not meta_path.is_file():
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
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{meta_path} is damaged or unsupported ({exc}); prepare the data again") from None

    def _file(self, name: object) -> Path:
        """A file the meta names: a plain name inside this folder, never a path out of it."""
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise UserError(f"{self.path / META} names the file {name!r}, which is not a file of this folder; "
                            "prepare the data again")
        return self.path / name

    @property
    def tokenizer_path(self) -> Path:
        return self._file(self.meta["tokenizer"]["file"])

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_file(self.tokenizer_path)

    def tokens(self, split: str) -> "TokenFile":
        """The split's bin, checked: its size against the meta, and (up to SCAN_BYTES) every id
        against the vocabulary; larger bins are checked batch by batch as they are read."""
        path = self._file(self.meta["splits"][split]["file"])
        expected = int(self.meta["splits"][split]["tokens"])
        if not path.is_file() or path.stat().st_size != expected * self.dtype.itemsize:
            raise UserError(f"{path} is missing or truncated (expected {expected:,} tokens); prepare the data again")
        tokens = TokenFile(path, self.dtype, self.vocab_size)
        if path.stat().st_size <= SCAN_BYTES:
            for start in range(0, len(tokens), SCAN_CHUNK):
                tokens.check_ids(start, tokens.read(start, min(SCAN_CHUNK, len(tokens) - start)))
        return tokens

    def samplers(self, block_size: int, batch_size: int, grad_accum: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        """(train, val) `loader.BatchSampler`s of random windows of `block_size` tokens."""
        from .loader import BatchSampler  # the loader reads TokenFile from here

        return tuple(BatchSampler(self.tokens(split), block_size, batch_size, seed, rank, world_size, split)
                     for split in SPLITS)


SCAN_BYTES = 1 << 30  # bins up to this size have every id checked when they are opened
SCAN_CHUNK = 1 << 24  # ids read at a time while checking


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


ID_DTYPES = ("auto", "uint16", "uint32")


def id_dtype(vocab_size: int, dtype: str) -> type:
    """The bins' id type: "auto" (uint16 when the vocabulary fits), "uint16" or "uint32"."""
    if dtype == "auto":
        return np.uint16 if vocab_size <= 2**16 else np.uint32
    if dtype == "uint16" and vocab_size > 2**16:
        raise bad_param("dtype", f"uint16 cannot hold this vocabulary: it has {vocab_size:,} tokens, too many for "
                                 "uint16 (max 65,536); use uint32 or a smaller `vocab_size`")
    return np.uint16 if dtype == "uint16" else np.uint32


class BinWriter:
    """Appends encoded documents to a folder's train.bin / val.bin and counts what went in."""

    def __init__(self, folder: Path, tokenizer: Tokenizer, dtype: type):
        self.folder, self.tokenizer, self.dtype = Path(folder), tokenizer, dtype
        self.stats = {s: {"file": f"{s}.bin", "documents": 0, "tokens": 1, "bytes": 0, "chars": 0} for s in SPLITS}
        self.files = {s: open(self.folder / f"{s}.bin", "wb") for s in SPLITS}
        self.hashes = {s: hashlib.sha256() for s in SPLITS}
        for split in SPLITS:
            self._write(split, np.array([tokenizer.eod_id], dtype=dtype))

    def add(self, documents: list[tuple[str, str, list[int]]]) -> None:
        """Append (split, normalized text, ids) documents, each followed by EOD."""
        buffers: dict[str, list[int]] = {s: [] for s in SPLITS}
        for split, text, ids in documents:
            buffers[split].extend(ids)
            buffers[split].append(self.tokenizer.eod_id)
            s = self.stats[split]
            s["documents"] += 1
            s["tokens"] += len(ids) + 1
            s["chars"] += len(text)
            s["bytes"] += len(text.encode("utf-8"))
        for split, ids in buffers.items():
            self._write(split, np.asarray(ids, dtype=self.dtype))

    def _write(self, split: str, ids: np.ndarray) -> None:
        data = ids.tobytes()
        self.files[split].write(data)
        self.hashes[split].update(data)

    def close(self) -> None:
        """Close the bins and record each one's sha256 in the stats."""
        for split, f in self.files.items():
            f.close()
            self.stats[split]["sha256"] = self.hashes[split].hexdigest()


def write_meta(folder: Path, tokenizer: Tokenizer, dtype: type, stats: dict, split: dict[str, Any]) -> dict:
    """Write the tokenizer and meta.json (last: it marks the folder complete); the meta."""
    tokenizer.save(Path(folder) / "tokenizer.json")
    meta = {
        "format": DATA_FORMAT, "version": DATA_FORMAT_VERSION, "normalization": NORMALIZATION,
        "tokenizer": {"file": "tokenizer.json", "kind": tokenizer.kind, "sha256": tokenizer.sha256,
                      "vocab_size": tokenizer.vocab_size, "eod_id": tokenizer.eod_id},
        "dtype": np.dtype(dtype).name, "splits": stats, "split_by": "document", **split,
    }
    atomic_write_json(Path(folder) / META, meta)
    return meta


IDENTITY_KEYS = ("tokens", "documents", "chars", "bytes", "sha256")


def same_splits(recorded: dict, current: dict) -> bool:
    """Whether two meta.json "splits" describe the same bins: equal in every identity key both
    record (a folder prepared before bins had checksums compares by its counts alone)."""
    for split in SPLITS:
        a, b = recorded.get(split) or {}, current.get(split) or {}
        shared = [k for k in IDENTITY_KEYS if k in a and k in b]
        if not shared or any(a[k] != b[k] for k in shared):
            return False
    return True
