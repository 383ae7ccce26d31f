"""What `--tokenizer` may name besides "bpe" and "char" (which prepare trains): a tokenizer.json,
a SentencePiece .model, a Hugging Face tokenizer folder, a run or data folder (its tokenizer is
reused), or hf:NAME. One function resolves them all, so prepare and what builds on it agree.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError, bad_param
from ..tokenizer import Tokenizer
from ..tokenizer_import import from_pretrained, from_sentencepiece
from .folder import DataFolder, is_data_folder

TOKENIZER_HELP = ("'bpe' (train byte-level BPE), 'char', or an existing tokenizer: a tokenizer.json, a SentencePiece "
                  ".model, a Hugging Face tokenizer folder, a run or data folder, or hf:NAME")
SENTENCEPIECE_SUFFIXES = (".model", ".spm")


def load_tokenizer(spec: str) -> Tokenizer:
    """The existing tokenizer `spec` names (see TOKENIZER_HELP), checked to make data with
    (`Tokenizer.check_unknown_id`); a UserError when it names none."""
    tokenizer = _named_tokenizer(spec)
    tokenizer.check_unknown_id()
    return tokenizer


def _named_tokenizer(spec: str) -> Tokenizer:
    if spec.startswith("hf:"):
        return from_pretrained(spec[3:])
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() in SENTENCEPIECE_SUFFIXES:
            return from_sentencepiece(path)
        if path.suffix.lower() == ".vocab":  # sentencepiece's trainer writes NAME.model and NAME.vocab
            model = path.with_suffix(".model")
            raise bad_param("tokenizer", f"{spec} is SentencePiece's vocabulary listing, not its model; pass "
                                         + (f"{model} (beside it)" if model.is_file() else "the .model file "
                                            "sentencepiece wrote with it"))
        try:
            return Tokenizer.from_file(path)
        except UserError:
            if path.suffix.lower() == ".json":  # meant as a tokenizer.json: its own error says what is wrong
                raise
            raise _none_of_these(spec) from None
    if path.is_dir():
        if (path / "meta.json").is_file() and is_data_folder(path):
            return DataFolder(path).tokenizer()
        from ..runfolder import (
            RunFolder,  # here, not above: it loads torch, which prepare's workers need not
        )

        run = RunFolder(path)
        if run.is_run_folder():
            return Tokenizer.from_file(run.tokenizer_path)
        lone = _lone_sentencepiece_model(path)
        return from_sentencepiece(lone) if lone is not None else from_pretrained(str(path))
    if os.path.lexists(path) or not (os.sep in spec or path.suffix):
        raise _none_of_these(spec)
    hub = f" (a Hugging Face hub name takes hf:, as hf:{spec})" if spec.count("/") == 1 and not spec.startswith((".", "/")) else ""
    raise bad_param("tokenizer", f"{spec} was not found; check the path{hub}")


def _none_of_these(spec: str) -> UserError:
    return bad_param("tokenizer", f"must be bpe, char or an existing tokenizer; {spec} is none of these "
                                  "(a tokenizer.json, a SentencePiece .model, a tokenizer folder, a run or data "
                                  "folder, or hf:NAME)")


def _lone_sentencepiece_model(folder: Path) -> Path | None:
    """The SentencePiece model of a folder that holds one and nothing a Hugging Face tokenizer
    loads from (no tokenizer.json or tokenizer_config.json): that model is the tokenizer."""
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        return None
    models = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SENTENCEPIECE_SUFFIXES]
    return models[0] if len(models) == 1 else None
