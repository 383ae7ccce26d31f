"""The embedded default corpus: original Bangla text written for this project.

Five registers, one folder each, one document per file: children's stories (`stories/`),
news-style reports (`news/`), everyday dialogue (`dialogue/`), essays (`essays/`) and verse
(`verse/`). All of it is original writing released with the package under its licence; the
quick start trains on it so that a fresh install can build a Bangla model with no download.
"""

from __future__ import annotations

from pathlib import Path

REGISTERS = ("stories", "news", "dialogue", "essays", "verse")


def corpus_dir() -> Path:
    """The folder holding the register sub-folders (pass it to `prepare` as an input)."""
    return Path(__file__).resolve().parent


def corpus_files() -> list[Path]:
    return sorted(p for register in REGISTERS for p in (corpus_dir() / register).glob("*.txt"))
