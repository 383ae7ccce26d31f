"""Text → a data folder (see `folder`): normalized documents, a tokenizer, token bins.

Three streaming passes keep memory bounded however large the corpus is: read and normalize
every document into a spool file (slow sources are read once); choose the validation documents
(seeded, whole documents) and train the tokenizer on the training documents only; encode in
batches (the `tokenizers` Rust side uses every core) and append the ids to the bins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from tqdm import tqdm

from ..config import MAX_SEED, Opt, show_progress
from ..errors import UserError, bad_param
from ..fileio import staged_folder
from ..text import normalize
from ..tokenizer import Coverage, Tokenizer, check_bpe_vocab_size, iter_chunks
from .folder import ID_DTYPES, SPLITS, BinWriter, id_dtype, is_data_folder, write_meta
from .sources import DEFAULT_TEXT_COLUMN, DOC_SPLITS, iter_documents, resolve_inputs
from .tokenizer_choice import TOKENIZER_HELP, load_tokenizer

ENCODE_BATCH_CHARS = 4_000_000
MAX_UNKNOWN_SHARE = 0.01  # more unknown tokens than this in a split stop prepare (see _check_coverage)


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
            c = self.meta.get("coverage", {}).get(split)
            covered = "" if c is None else (f", {c['unknown_share']:.2%} unknown / {c['byte_fallback_share']:.2%} "
                                             "byte-fallback tokens")
            lines.append(f"{split:>5}: {s['documents']:,} documents, {s['chars']:,} characters, "
                         f"{s['tokens']:,} tokens, {s['chars'] / max(s['tokens'], 1):.2f} characters/token{covered}")
        return "\n".join(lines)


def prepare(
    inputs: list[str], out_dir: str | Path,
    tokenizer: Annotated[str, Opt(TOKENIZER_HELP)] = "bpe",
    vocab_size: Annotated[int, Opt("BPE vocabulary size")] = 8000,
    val_fraction: Annotated[float, Opt("share of documents held out for validation")] = 0.05,
    seed: Annotated[int, Opt("seed of the train/val document split")] = 42,
    text_column: Annotated[str | None, Opt(f"the column or field holding the text in tables and datasets "
                                           f"(default '{DEFAULT_TEXT_COLUMN}')")] = None,
    doc_split: Annotated[str, Opt("what one document is in .txt/.md files", DOC_SPLITS)] = "file",
    dtype: Annotated[str, Opt("token id storage", ID_DTYPES)] = "auto",
    allow_unknown: Annotated[bool, Opt(f"keep data with more than {MAX_UNKNOWN_SHARE:.0%} unknown tokens (the text "
                                       "the tokenizer cannot represent is lost)")] = False,
    progress: bool | None = None,
) -> PrepareResult:
    """Prepare a data folder from `inputs` (files, folders, globs, tables or hf:NAME; see
    `sources`). `progress=None` shows bars only on a terminal. Raises UserError, leaving any
    earlier data folder at `out_dir` untouched, for bad options or inputs."""
    if not 0 < val_fraction < 1:
        raise bad_param("val_fraction", f"must be between 0 and 1 (exclusive), got {val_fraction}")
    if not 0 <= seed <= MAX_SEED:
        raise bad_param("seed", f"must be in [0, {MAX_SEED}], got {seed}")
    if dtype not in ID_DTYPES:
        raise bad_param("dtype", f"must be one of {', '.join(ID_DTYPES)}, got {dtype}")
    existing = load_tokenizer(tokenizer) if tokenizer not in ("bpe", "char") else None
    if tokenizer == "bpe":
        check_bpe_vocab_size(vocab_size)
    sources = resolve_inputs(inputs)
    _check_apart(sources, Path(out_dir))
    start = time.perf_counter()
    with staged_folder(out_dir, "data folder", replaceable=is_data_folder) as work:
        spool = work / "documents.jsonl"
        n_docs, chars, input_bytes = _spool(iter_documents(sources, text_column, doc_split), spool, progress)
        is_val = _choose_validation(n_docs, val_fraction, seed)
        tok = existing or _train_tokenizer(tokenizer, spool, is_val, chars, vocab_size, progress)
        np_dtype = id_dtype(tok.vocab_size, dtype)
        stats, coverage = _encode(spool, is_val, tok, np_dtype, work, progress)
        _check_coverage(coverage, allow_unknown)
        spool.unlink()
        sources_seen = [s.location for s in sources[:20]] + ([f"... {len(sources) - 20} more"] if len(sources) > 20 else [])
        meta = write_meta(work, tok, np_dtype, stats, {
            "val_fraction": val_fraction, "seed": seed, "doc_split": doc_split, "sources": sources_seen,
            "coverage": {split: c.to_dict() for split, c in coverage.items()}})
    return PrepareResult(Path(out_dir), meta, time.perf_counter() - start, input_bytes)


def _check_apart(sources, out: Path) -> None:
    """The data folder may not hold an input (it is replaced as a whole), nor sit inside one."""
    target = out.resolve()
    for source in sources:
        if source.kind == "hf":
            continue
        path = Path(source.location).resolve()
        if path == target or target in path.parents:
            raise UserError(f"the output folder {out} holds the input {source.location}; write the data folder "
                            "somewhere else")


def _spool(documents: Iterator[str], spool: Path, progress) -> tuple[int, set[str], int]:
    """Normalize and write non-empty documents, one JSON string per line."""
    n_docs, chars, n_bytes = 0, set(), 0
    with open(spool, "w", encoding="utf-8") as fh:
        for raw in tqdm(documents, desc="reading", unit="doc", disable=not show_progress(progress)):
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


def _choose_validation(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Which documents are held out: a seeded choice of whole documents, at least one each side."""
    if n_docs == 0:
        raise UserError("the inputs hold no text (every document is empty after normalization)")
    if n_docs < 2:
        raise UserError("found only 1 document, but train/val are split by document; "
                        "add files or split the text with --doc-split paragraph (or line)")
    n_val = min(max(1, round(n_docs * val_fraction)), n_docs - 1)
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n_docs)[:n_val]] = True
    return is_val


def _train_tokenizer(spec: str, spool: Path, is_val: np.ndarray, chars: set[str], vocab_size: int,
                     progress) -> Tokenizer:
    """BPE trained on the training documents only (validation text never shapes the vocabulary),
    or a char tokenizer over every character seen."""
    if spec == "bpe":
        train_docs = (doc for i, doc in enumerate(_read_spool(spool)) if not is_val[i])
        return Tokenizer.train_bpe(train_docs, vocab_size, length=int((~is_val).sum()), show_progress=show_progress(progress))
    return Tokenizer.build_char(chars)


def _encode(spool: Path, is_val: np.ndarray, tok: Tokenizer, np_dtype: type, work: Path,
            progress) -> tuple[dict, dict[str, Coverage]]:
    """Encode the spooled documents into the folder's bins; their statistics and the
    tokenizer's coverage, per split."""
    writer = BinWriter(work, tok, np_dtype)
    coverage = {split: Coverage() for split in SPLITS}
    bar = tqdm(total=len(is_val), desc="encoding", unit="doc", disable=not show_progress(progress))
    index = 0
    try:
        for batch in iter_chunks(_read_spool(spool), max_chars=ENCODE_BATCH_CHARS):
            splits = ["val" if is_val[index + i] else "train" for i in range(len(batch))]
            for split in SPLITS:
                docs = [doc for doc, s in zip(batch, splits) if s == split]
                writer.add([(split, doc, ids) for doc, ids in zip(docs, tok.encode_batch(docs, coverage[split]))])
            index += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
        writer.close()
    return writer.stats, coverage


def _check_coverage(coverage: dict[str, Coverage], allow_unknown: bool) -> None:
    """A UserError when more than MAX_UNKNOWN_SHARE of a split's tokens are unknown: that text
    would be lost, and a model trained on it learns little (a broken tokenizer.json that turned
    every word into <unk> once passed silently)."""
    for split, c in coverage.items():
        if c.unknown_share > MAX_UNKNOWN_SHARE and not allow_unknown:
            raise UserError(f"the tokenizer cannot represent this text: {split} has {c.describe()}; use a "
                            "tokenizer that covers it, or accept the loss with `allow_unknown`",
                            param="allow_unknown")
