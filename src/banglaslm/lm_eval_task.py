"""Write a perplexity task for EleutherAI's lm-evaluation-harness (`lm_eval`) from text files.

    write_perplexity_task([a.txt, b.txt], OUT_DIR, name="bangla_ppl") writes
      OUT_DIR/bangla_ppl.jsonl   one JSON object per input file: {"text": ..., "source": ...}
      OUT_DIR/bangla_ppl.yaml    the task: loglikelihood_rolling over "text", with
                                 word_perplexity, byte_perplexity and bits_per_byte

so that, with a folder from `banglaslm export RUN --format hf --out EXPORT_DIR`,

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf \\
        --model_args pretrained=EXPORT_DIR,dtype=float32 --include_path OUT_DIR --tasks bangla_ppl

scores the model on exactly our text, offline (the YAML names the JSONL by absolute path and
loads it with the `datasets` "json" builder; nothing is fetched).

Why a task file and not a built-in task: lm-eval's stock perplexity tasks are English
(wikitext, pile) and download their data. Why this module does not import `lm_eval`: writing
the task needs only the standard library, and lm-eval (with its large dependency tree) stays
an optional install; only *running* the task needs it.

One document per input file. `banglaslm eval FILE` also scores a file as one document (its
whole normalized text after one end-of-document token), so each file's bits per byte from
lm-eval equals `banglaslm eval FILE --stride BLOCK_SIZE` (see docs/lm-eval.md), and no text is
dropped: splitting into paragraphs would restart the context at every blank line and leave the
blank lines themselves (bytes `banglaslm eval` counts) out of both the score and the byte count.
Split a corpus into files yourself if you want smaller documents.

Every document is passed through `normalize()` here, so lm-eval's byte and word counts are those
of the normalized text (what `banglaslm eval` counts too); the exported tokenizer normalizes
again, which changes nothing on normalized text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import UserError
from .fileio import atomic_path, atomic_write_text
from .normalize import NORMALIZATION, normalize
from .sources import read_text_file

# lm-eval task names are also file names here and must not look like a path or a glob.
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")


def _yaml_str(value: str) -> str:
    """`value` as a YAML double-quoted scalar, pure ASCII: every other character escaped as
    \\uXXXX or \\UXXXXXXXX (YAML's escapes; JSON's surrogate pairs would not survive)."""
    out = []
    for ch in value:
        cp = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= cp < 0x7F:
            out.append(ch)
        elif cp <= 0xFFFF:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(f"\\U{cp:08x}")
    return '"' + "".join(out) + '"'


def task_yaml(name: str, jsonl: Path, n_docs: int) -> str:
    """The task definition for `name`, reading documents from the absolute path `jsonl`."""
    return "\n".join([
        "# Written by banglaslm.lm_eval_task.write_perplexity_task; see docs/lm-eval.md.",
        f"# {n_docs} document(s), one per input file, normalized with banglaslm policy {NORMALIZATION}.",
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {_yaml_str(str(jsonl))}",
        "test_split: test",
        "output_type: loglikelihood_rolling",
        'doc_to_text: ""',
        # A column name (not a "{{text}}" template): lm-eval then passes the string through
        # untouched; a rendered template that looks like "[...]" would be literal_eval'd.
        "doc_to_target: text",
        # lm-eval's defaults for these three, spelled out (it warns when they are left out).
        # All are corpus-level: total log-likelihood over total words / bytes of all documents.
        "metric_list:",
        "  - metric: word_perplexity",
        "    aggregation: weighted_perplexity",
        "    higher_is_better: false",
        "  - metric: byte_perplexity",
        "    aggregation: weighted_perplexity",
        "    higher_is_better: false",
        "  - metric: bits_per_byte",
        "    aggregation: bits_per_byte",
        "    higher_is_better: false",
        "metadata:",
        "  version: 1.0",
        "",
    ])


def write_perplexity_task(texts: list[Path], out_dir: Path, name: str = "bangla_ppl") -> Path:
    """Write OUT_DIR/NAME.jsonl and OUT_DIR/NAME.yaml (see the module docstring); returns
    OUT_DIR, the folder to pass to `lm_eval --include_path`.

    Each file in `texts` (UTF-8 text) becomes one normalized document. Raises UserError for a
    bad name, a missing / unreadable / empty file or an unusable OUT_DIR, before writing
    anything. Each file is written atomically, the JSONL before the YAML that points to it, so
    lm-eval never sees a task without its data.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UserError(f"task name {name!r} is not usable; use letters, digits, '_' or '-', starting "
                        "with a letter (e.g. bangla_ppl)")
    if isinstance(texts, (str, Path)):  # one file given without a list
        texts = [texts]
    texts = [Path(t) for t in texts]
    if not texts:
        raise UserError("no text files given; pass at least one UTF-8 text file to evaluate on")
    docs = []
    for path in texts:
        if not path.exists():
            raise UserError(f"text file not found: {path}; check the path")
        if not path.is_file():
            raise UserError(f"{path} is not a file; pass UTF-8 text files, not folders")
        try:
            text = normalize("\n\n".join(read_text_file(str(path), "file")))
        except OSError as exc:
            raise UserError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
        if not text:
            raise UserError(f"{path} holds no text after normalization; remove it from the list")
        # a file name that is not valid UTF-8 (surrogate-escaped) gets U+FFFD, not a crash
        docs.append({"text": text, "source": path.name.encode("utf-8", "replace").decode("utf-8")})
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder; choose another output folder")
    jsonl = out_dir / f"{name}.jsonl"
    yaml = out_dir / f"{name}.yaml"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(jsonl) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                for doc in docs:
                    fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
        atomic_write_text(yaml, task_yaml(name, jsonl, len(docs)))
    except OSError as exc:
        raise UserError(f"cannot write the task to {out_dir} ({exc.strerror or exc}); "
                        "choose a writable folder") from None
    return out_dir
