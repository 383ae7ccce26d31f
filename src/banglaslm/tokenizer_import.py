"""Tokenizers made elsewhere, as our `Tokenizer`: a SentencePiece `.model` file (unigram or BPE,
with or without byte fallback) and Hugging Face tokenizers (a folder, or hf:NAME).

Both go through transformers: its SentencePiece converter builds the tokenizer.json that encodes
like `SentencePieceProcessor.encode` (tests/core/test_tokenizer_import.py checks the ids on the
shared books), and `AutoTokenizer` loads a folder or a hub name as the model's authors meant it.
The model's own normalization (SentencePiece's nmt_nfkc, say) runs after ours; docs/data.md says
what that means for Bangla.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from .errors import UserError
from .tokenizer import Tokenizer

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
    if kind not in (UNIGRAM, BPE) or not proto.pieces:
        raise UserError(f"{path}: only SentencePiece unigram and BPE models can be read (this one has "
                        f"model type {kind} and {len(proto.pieces)} pieces)")
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


def from_pretrained(name: str) -> Tokenizer:
    """A Hugging Face tokenizer by folder or hub name, loaded by `AutoTokenizer` (so a folder
    holding only a SentencePiece model and its tokenizer_config.json is converted as its class says)."""
    transformers, _, _ = _transformers()
    try:
        loaded = transformers.AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # network, missing files, unknown classes: all fixable by the user
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"could not load the tokenizer {name!r} ({first[:200]}); check the name or folder "
                        "(a hub name needs a connection)") from None
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{name!r} has no fast (tokenizers) version that banglaslm can use")
    spec_type = backend.model.__class__.__name__.lower()
    return Tokenizer(HFTokenizer.from_str(backend.to_str()), f"external-{spec_type}")
