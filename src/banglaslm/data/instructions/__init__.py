"""The embedded instruction set: original Bangla conversations written for this project (see
README.md here), the default data of `banglaslm finetune`."""

from __future__ import annotations

from pathlib import Path


def instruction_files() -> list[Path]:
    """The JSON Lines files of the set, one per kind of conversation."""
    return sorted(Path(__file__).resolve().parent.glob("*.jsonl"))
