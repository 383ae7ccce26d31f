"""Tokenizers made elsewhere, as our `Tokenizer`: a SentencePiece `.model` file (unigram or BPE,
with or without byte fallback) and Hugging Face tokenizers (a folder, or hf:NAME).

Both go through transformers: its SentencePiece converter builds the tokenizer.json that encodes
like `SentencePieceProcessor.encode` (tests/core/test_tokenizer_import.py checks the ids on the
shared books), and `AutoTokenizer` loads a folder or a hub name as the model's authors meant it.
The model's own normalization (SentencePiece's nmt_nfkc, say) runs after ours; docs/data.md says
what that means for Bangla.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from .errors import UserError
from .fileio import read_json_or_fail
from .text import HASANTA, ZWJ, ZWNJ, char_class, character_classes
from .tokenizer import EOD_CANDIDATES, Tokenizer

UNIGRAM, BPE = 1, 2              # SentencePiece's ModelProto.TrainerSpec.model_type
UNKNOWN, CONTROL = 2, 3          # and its SentencePiece.Type


def _transformers():
    try:
        import transformers
        from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf
    except ImportError as exc:
        raise UserError(f"reading this tokenizer needs transformers, sentencepiece and protobuf ({exc}); "
                        "pip install transformers sentencepiece protobuf") from None
    return transformers, SpmConverter, import_protobuf


def from_sentencepiece(path: str | Path) -> Tokenizer:
    """A SentencePiece model file, converted by transformers; ids equal SentencePiece's own."""
    _, SpmConverter, import_protobuf = _transformers()
    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as exc:  # protobuf's DecodeError, and what a truncated file raises
        raise UserError(f"{path} is not a SentencePiece model ({exc}); pass a .model file from "
                        "sentencepiece's trainer") from None
    kind = proto.trainer_spec.model_type
    if not proto.pieces:  # an empty or cut-off file parses as an empty model
        raise UserError(f"{path} holds no pieces, so it is not a SentencePiece model (an empty or cut-off file?); "
                        "pass the .model file sentencepiece's trainer wrote")
    if kind not in (UNIGRAM, BPE):
        raise UserError(f"{path}: only SentencePiece unigram and BPE models can be read (this one has "
                        f"model type {({3: 'word', 4: 'char'}).get(kind, kind)})")
    if not any(p.piece in EOD_CANDIDATES for p in proto.pieces):  # trained with eos_id=-1
        raise UserError(f"{path} has no end-of-sentence piece ({proto.trainer_spec.eos_piece or '</s>'}), which "
                        "banglaslm puts between documents; train it again with an eos piece (sentencepiece's "
                        "default, eos_id=2)")
    if kind == UNIGRAM:
        vocab = [(p.piece, p.score) for p in proto.pieces]
    else:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    hf = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    if hf is None:
        raise UserError(f"{path}: transformers could not convert this SentencePiece model")
    # SentencePiece's unknown and control pieces (<unk>, <s>, </s>) are special: never text.
    hf.add_special_tokens([AddedToken(p.piece, special=True) for p in proto.pieces if p.type in (UNKNOWN, CONTROL)])
    return Tokenizer(HFTokenizer.from_str(hf.to_str()), "external-unigram" if kind == UNIGRAM else "external-bpe")


# ---- normalization as a tokenizers normalizer -----------------------------------------------
def _replace(pattern: str, content: str, regex: bool = True) -> dict[str, Any]:
    return {"type": "Replace", "pattern": {"Regex" if regex else "String": pattern}, "content": content}


def bangla_normalizer() -> dict[str, Any]:
    """`normalize()` (policy NORMALIZATION) as a tokenizer.json `normalizer` (a Sequence)."""
    classes = character_classes()
    newline, space, drop = classes["newline"], classes["space"], classes["drop"]
    hasanta, joiners = HASANTA, ZWNJ + ZWJ
    # tokenizers' Unicode tables predate U+09FE (BENGALI SANDHI MARK, ccc 230) and leave it in
    # front of a nukta (ccc 7) / hasanta (ccc 9): the canonical ordering is finished by hand.
    sandhi_order = [_replace(a + b, b + a, regex=False) for _ in range(4)
                    for a, b in (("\u09fe", "\u09bc"), ("\u09fe", "\u09cd"), ("\u09cd", "\u09bc"))]
    steps = [
        _replace("\r\n", "\n", regex=False),
        _replace(f"[{char_class(newline)}]", "\n"),
        _replace(f"[{char_class(space)}]", " "),
        _replace(f"[{char_class(drop)}]", ""),
        {"type": "NFD"},
        *sandhi_order,
        # normalize() keeps the first joiner of a run; Replace has no back-references, so one
        # rule per leading joiner (the ZWNJ rule cannot break a ZWJ-led run: see the tests).
        _replace(f"{ZWNJ}[{joiners}]+", ZWNJ),
        _replace(f"{ZWJ}[{joiners}]+", ZWJ),
        _replace(f"(?<!{hasanta})[{joiners}]+(?![{joiners}]*{hasanta})", ""),
        *sandhi_order,  # marks a removed joiner separated are ordered too, as NFC orders them
        {"type": "NFC"},
        _replace("\u09a1\u09bc", "\u09dc", regex=False),  # ড় ঢ় য় recomposed
        _replace("\u09a2\u09bc", "\u09dd", regex=False),
        _replace("\u09af\u09bc", "\u09df", regex=False),
        _replace("\u09a4\u09cd\u200d", "\u09ce", regex=False),  # old khanda-ta
        _replace(" {2,}", " "),
        _replace(" *\n *", "\n"),
        _replace("\n{3,}", "\n\n"),
        {"type": "Strip", "strip_left": True, "strip_right": True},
    ]
    return {"type": "Sequence", "normalizers": steps}


def with_bangla_normalizer(spec: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer.json spec that normalizes as `normalize()` does (for exports: other tools then
    need not know our normalization)."""
    spec = dict(spec)
    ours = bangla_normalizer()
    existing = spec.get("normalizer")
    if existing:
        ours["normalizers"].append(existing)
    spec["normalizer"] = ours
    return spec


def strip_bangla_normalizer(spec: dict[str, Any], steps_added: int | None = None) -> dict[str, Any]:
    """Undo `with_bangla_normalizer`'s normalizer (our Python normalize() runs anyway).

    `steps_added` is what the exporting banglaslm recorded in config.json (its normalizer may
    differ from this version's); without it, only this version's exact normalizer is removed."""
    norm = spec.get("normalizer") or {}
    steps = norm.get("normalizers") if norm.get("type") == "Sequence" else None
    ours = bangla_normalizer()["normalizers"]
    n = len(ours) if steps_added is None else steps_added
    if not steps or n <= 0 or len(steps) < n:
        return spec
    if steps_added is None and json.dumps(steps[:n]) != json.dumps(ours):
        return spec
    spec = dict(spec)
    rest = steps[n:]
    spec["normalizer"] = rest[0] if len(rest) == 1 else ({"type": "Sequence", "normalizers": rest} if rest else None)
    return spec


def read_tokenizer_json(path: Path, normalizer_steps: Any = None, post_processor: Any = None) -> Tokenizer:
    """A tokenizer.json as it was before a banglaslm export added our normalizer (removed:
    `normalizer_steps` as the export recorded it, else only this version's exact one) and its
    post-processor (the run's own, `post_processor`, put back: the tokenizer's hash is then the
    run's), with no truncation or padding (our encode must never cut text silently)."""
    steps = normalizer_steps if isinstance(normalizer_steps, int) and not isinstance(normalizer_steps, bool) else None
    spec = strip_bangla_normalizer(read_json_or_fail(path), steps)
    spec["truncation"] = None
    spec["padding"] = None
    spec["post_processor"] = post_processor if isinstance(post_processor, dict) else None  # our encode adds none
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False), str(path))


def export_provenance(folder: Path) -> dict | None:
    """What a banglaslm export wrote about itself into config.json ("banglaslm"); None if none."""
    config = read_json_or_fail(folder / "config.json") if (folder / "config.json").is_file() else None
    found = config.get("banglaslm") if isinstance(config, dict) else None
    return found if isinstance(found, dict) else None


# What a Hugging Face tokenizer folder holds its vocabulary in: one of these at least
# (tokenizer_config.json alone made transformers build a tokenizer of special tokens only).
TOKENIZER_FILES = ("tokenizer.json", "*.model", "vocab.json", "vocab.txt")


def from_pretrained(name: str) -> Tokenizer:
    """A Hugging Face tokenizer by folder or hub name, loaded by `AutoTokenizer` (so a folder
    holding only a SentencePiece model and its tokenizer_config.json is converted as its class says)."""
    provenance = export_provenance(Path(name)) if Path(name).is_dir() else None
    if provenance is not None and (Path(name) / "tokenizer.json").is_file():  # our own export, read back exactly
        return read_tokenizer_json(Path(name) / "tokenizer.json", provenance.get("tokenizer_normalizer_steps"),
                                   provenance.get("tokenizer_post_processor"))
    if Path(name).is_dir() and not any(any(Path(name).glob(pattern)) for pattern in TOKENIZER_FILES):
        config = " (its tokenizer_config.json alone has no vocabulary)" if (Path(name) / "tokenizer_config.json").is_file() \
            else ""
        raise UserError(f"{name} holds no tokenizer ({', '.join(TOKENIZER_FILES)}){config}; give the folder that holds "
                        "one, or the tokenizer file itself")
    transformers, _, _ = _transformers()
    try:
        loaded = transformers.AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # network, missing files, unknown classes: all fixable by the user
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        models = sorted(p.name for p in Path(name).glob("*.model")) if Path(name).is_dir() else []
        fix = (f"name the SentencePiece model itself ({Path(name) / models[0]}), or add the tokenizer_config.json "
               "it came with" if models else "check the name or folder (a hub name needs a connection)")
        raise UserError(f"could not load the tokenizer {name!r} ({first[:200]}); {fix}") from None
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{name!r} has no fast (tokenizers) version that banglaslm can use")
    spec_type = backend.model.__class__.__name__.lower()
    return Tokenizer(HFTokenizer.from_str(backend.to_str()), f"external-{spec_type}")
