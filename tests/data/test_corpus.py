"""The embedded corpus: original text in five registers, big enough, clean by our own rules."""

import unicodedata

from banglaslm.data.corpus import REGISTERS, corpus_dir, corpus_files
from banglaslm.text import normalize


def test_size_and_registers():
    files = corpus_files()
    by_register = {r: [f for f in files if f.parent.name == r] for r in REGISTERS}
    assert all(len(v) >= 5 for v in by_register.values()), {k: len(v) for k, v in by_register.items()}
    total = sum(len(f.read_text(encoding="utf-8")) for f in files)
    assert total >= 100_000


def test_text_is_clean_bangla_already_in_normal_form():
    for f in corpus_files():
        text = f.read_text(encoding="utf-8")
        assert "\u09bc" not in text, f  # precomposed nukta letters only
        assert "\u200c" not in text and "\u200d" not in text and "\t" not in text, f
        assert normalize(text) == text.strip(), f
        letters = [c for c in text if unicodedata.category(c).startswith("L")]
        assert sum("\u0980" <= c <= "\u09ff" for c in letters) / len(letters) > 0.99, f


def test_corpus_dir_is_a_prepare_input(capsys):
    from banglaslm.data.sources import resolve_inputs

    assert len(resolve_inputs([str(corpus_dir())])) == len(corpus_files())
    assert "note:" not in capsys.readouterr().err  # the quick start's input: its package's __init__.py is no news
