"""Text → token bins: `train.bin`, `val.bin`, `tokenizer.json` and `meta.json` in a data folder.

Three streaming passes keep memory bounded however large the corpus is:
1. read every document, normalize it, drop empty ones, and spool it to a temporary file
   (so slow sources such as hub datasets are read once) while counting;
2. choose the validation documents (seeded, by document) and train the tokenizer on the
   training documents only, so validation text never shapes the vocabulary;
3. encode in batches (the `tokenizers` Rust side uses every core) and append ids to the bins.
Each document is followed by the end-of-document token and each bin starts with one, so every
document (the first included) is seen after an EOD, exactly as a prompt is at generation time.
Nothing is truncated. All files are written to a temporary folder and moved in at the end.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import UserError
from .fileio import atomic_write_json
from .normalize import NORMALIZATION, normalize
from .sources import iter_documents, resolve_inputs
from .tokenizer import Tokenizer, iter_chunks

DATA_FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass
class PrepareResult:
    out_dir: Path
    meta: dict
    seconds: float
    input_bytes: int

    def summary(self) -> str:
        lines = [f"prepared {self.out_dir} in {self.seconds:.1f} s "
                 f"({self.input_bytes / 1e6 / max(self.seconds, 1e-9):.2f} MB/s of normalized text)"]
        tok = self.meta["tokenizer"]
        lines.append(f"tokenizer: {tok['kind']}, vocabulary {tok['vocab_size']:,}, ids stored as {self.meta['dtype']}")
        for split in SPLITS:
            s = self.meta["splits"][split]
            lines.append(f"{split:>5}: {s['documents']:,} documents, {s['chars']:,} characters, "
                         f"{s['tokens']:,} tokens, {s['chars'] / max(s['tokens'], 1):.2f} characters/token")
        return "\n".join(lines)


def prepare(inputs: list[str], out_dir: str | Path, tokenizer: str = "bpe", vocab_size: int = 8000,
            val_fraction: float = 0.05, seed: int = 42, text_column: str | None = None,
            doc_split: str = "file", dtype: str = "auto", progress: bool | None = None) -> PrepareResult:
    """Prepare a data folder from `inputs` (see `sources` for what an input can be).

    `tokenizer` is "bpe" (train byte-level BPE of `vocab_size`), "char", or the path of an
    existing tokenizer.json. `dtype` is "auto" (uint16 when the vocabulary fits), "uint16" or
    "uint32". `progress=None` shows bars only on a terminal.
    """
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if dtype not in ("auto", "uint16", "uint32"):
        raise UserError(f"--dtype must be auto, uint16 or uint32, got {dtype}")
    if tokenizer not in ("bpe", "char") and not Path(tokenizer).is_file():
        raise UserError(f"--tokenizer must be bpe, char or the path of a tokenizer.json; {tokenizer} is none of these")
    sources = resolve_inputs(inputs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out_dir))
    try:
        meta, input_bytes = _prepare_into(work, sources, tokenizer, vocab_size, val_fraction, seed,
                                          text_column, doc_split, dtype, progress)
        # Bins and tokenizer first, meta.json last: a folder with a meta.json is complete.
        for name in ("train.bin", "val.bin", "tokenizer.json"):
            (work / name).replace(out_dir / name)
        atomic_write_json(out_dir / "meta.json", meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not any(out_dir.iterdir()):
            out_dir.rmdir()
    return PrepareResult(out_dir, meta, time.perf_counter() - start, input_bytes)


def _prepare_into(work: Path, sources, tokenizer_spec: str, vocab_size: int, val_fraction: float,
                  seed: int, text_column, doc_split: str, dtype: str, progress) -> tuple[dict, int]:
    spool = work / "documents.jsonl"
    n_docs, chars, input_bytes = _spool(iter_documents(sources, text_column, doc_split), spool, progress)
    if n_docs == 0:
        raise UserError("the inputs hold no text (every document is empty after normalization)")
    if n_docs < 2:
        raise UserError("found only 1 document, but train/val are split by document; "
                        "add files or split the text with --doc-split paragraph (or line)")
    n_val = min(max(1, round(n_docs * val_fraction)), n_docs - 1)
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n_docs)[:n_val]] = True

    if tokenizer_spec == "bpe":
        train_docs = (doc for i, doc in enumerate(_read_spool(spool)) if not is_val[i])
        tok = Tokenizer.train_bpe(train_docs, vocab_size, length=n_docs - n_val,
                                  show_progress=_show(progress))
    elif tokenizer_spec == "char":
        tok = Tokenizer.build_char(chars)
    else:
        tok = Tokenizer.from_file(tokenizer_spec)
    np_dtype = _choose_dtype(tok.vocab_size, dtype)
    tok.save(work / "tokenizer.json")

    stats = {s: {"file": f"{s}.bin", "documents": 0, "tokens": 1, "bytes": 0, "chars": 0} for s in SPLITS}
    eod = tok.eod_id
    with open(work / "train.bin", "wb") as f_train, open(work / "val.bin", "wb") as f_val:
        files = {"train": f_train, "val": f_val}
        for f in files.values():
            np.array([eod], dtype=np_dtype).tofile(f)
        bar = tqdm(total=n_docs, desc="encoding", unit="doc", disable=not _show(progress))
        doc_index = 0
        for batch in iter_chunks(_read_spool(spool), max_chars=4_000_000):
            encoded = tok.encode_batch(batch)
            buffers: dict[str, list[int]] = {"train": [], "val": []}
            for text, ids in zip(batch, encoded):
                split = "val" if is_val[doc_index] else "train"
                buffers[split].extend(ids)
                buffers[split].append(eod)
                s = stats[split]
                s["documents"] += 1
                s["tokens"] += len(ids) + 1
                s["chars"] += len(text)
                s["bytes"] += len(text.encode("utf-8"))
                doc_index += 1
            for split, ids in buffers.items():
                np.asarray(ids, dtype=np_dtype).tofile(files[split])
            bar.update(len(batch))
        bar.close()

    meta = {
        "format": "banglaslm-data", "version": DATA_FORMAT_VERSION,
        "normalization": NORMALIZATION,
        "tokenizer": {"file": "tokenizer.json", "kind": tok.kind, "sha256": tok.sha256,
                      "vocab_size": tok.vocab_size, "eod_id": eod},
        "dtype": np.dtype(np_dtype).name,
        "splits": stats,
        "split_by": "document", "val_fraction": val_fraction, "seed": seed, "doc_split": doc_split,
        "sources": [s.location for s in sources[:20]] + ([f"... {len(sources) - 20} more"] if len(sources) > 20 else []),
    }
    return meta, input_bytes


def _show(progress: bool | None) -> bool:
    import sys

    return sys.stderr.isatty() if progress is None else progress


def _spool(documents: Iterator[str], spool: Path, progress) -> tuple[int, set[str], int]:
    """Normalize and write non-empty documents, one JSON string per line."""
    n_docs, chars, n_bytes = 0, set(), 0
    with open(spool, "w", encoding="utf-8") as fh:
        for raw in tqdm(documents, desc="reading", unit="doc", disable=not _show(progress)):
            text = normalize(raw)
            if not text:
                continue
            fh.write(json.dumps(text, ensure_ascii=False))
            fh.write("\n")
            chars.update(text)
            n_bytes += len(text.encode("utf-8"))
            n_docs += 1
    return n_docs, chars, n_bytes


def _read_spool(spool: Path) -> Iterator[str]:
    with open(spool, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def _choose_dtype(vocab_size: int, dtype: str) -> type:
    if dtype == "auto":
        return np.uint16 if vocab_size <= 2**16 else np.uint32
    if dtype == "uint16" and vocab_size > 2**16:
        raise UserError(f"the vocabulary has {vocab_size:,} tokens, too many for uint16 (max 65,536); "
                        "use --dtype uint32 or a smaller --vocab-size")
    return np.uint16 if dtype == "uint16" else np.uint32
