"""A perplexity task for EleutherAI's lm-evaluation-harness (`lm_eval`) from text files.

`write_perplexity_task(files, OUT_DIR, name)` writes NAME.jsonl (one normalized document per
file) and NAME.yaml (a loglikelihood_rolling task over it), so that `lm_eval --include_path
OUT_DIR --tasks NAME` scores an HF export on exactly our text, offline; each file's bits per
byte then equals `banglaslm eval FILE --stride BLOCK_SIZE`. Writing the task needs only the
standard library (and lm-eval's task index, where it is installed, to refuse a name of its
own tasks); only running it needs lm-eval. docs/lm-eval.md has the how and why.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Annotated

from ..config import Opt
from ..data.sources import read_whole_text
from ..errors import UserError
from ..fileio import (
    atomic_path,
    atomic_write_text,
    check_destination,
    exclusive,
    is_writer_file,
)
from ..text import NORMALIZATION, normalize

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


_MARK = "# Written by banglaslm.evaluation.lm_eval_task.write_perplexity_task"


def _only_tasks(folder: Path, yaml: Path, jsonl: Path) -> bool:
    """Whether `folder` holds lm-eval task files only (other tasks may share it; lm-eval reads
    every YAML there), and the two this task writes, where present, are an earlier one of ours."""
    entries = [p for p in folder.iterdir() if not is_writer_file(p)]
    ours = yaml.is_file() and yaml.read_text(encoding="utf-8", errors="replace").startswith(_MARK)
    return all(p.is_file() and p.suffix in (".yaml", ".yml", ".jsonl") for p in entries) and \
        (ours or not (yaml.exists() or jsonl.exists()))


def task_yaml(name: str, jsonl: Path, n_docs: int) -> str:
    """The task definition for `name`, reading documents from the absolute path `jsonl`."""
    return "\n".join([
        f"{_MARK}; see docs/lm-eval.md.",
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


@functools.lru_cache(maxsize=1)
def _builtin_task_names() -> frozenset[str]:
    """lm-eval's own task, group and tag names (indexing them takes seconds); none where lm-eval
    is not installed, since no name can clash there."""
    try:
        from lm_eval.tasks import TaskManager

        return frozenset(TaskManager().all_tasks)
    except Exception:  # noqa: BLE001 - absent or broken (a torch mismatch, say): writing the task needs none of it
        return frozenset()


def write_perplexity_task(texts: list[Path], out_dir: Path,
                          name: Annotated[str, Opt("task name")] = "bangla_ppl") -> Path:
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
        try:
            text = normalize(read_whole_text(path))
        except OSError as exc:
            raise UserError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
        if not text:
            raise UserError(f"{path} holds no text after normalization; remove it from the list")
        # a file name that is not valid UTF-8 (surrogate-escaped) gets U+FFFD, not a crash
        docs.append({"text": text, "source": path.name.encode("utf-8", "replace").decode("utf-8")})
    if name in _builtin_task_names():  # last: indexing them takes seconds. Results would be filed
        # under a known benchmark's name, and shadow it.
        raise UserError(f"task name {name!r} is one of lm-eval's own tasks; choose another (e.g. bangla_ppl)")
    out_dir = Path(out_dir).absolute()
    jsonl = out_dir / f"{name}.jsonl"
    yaml = out_dir / f"{name}.yaml"
    check_destination(out_dir, "lm-eval task folder", replaceable=lambda folder: _only_tasks(folder, yaml, jsonl))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the task to {out_dir} ({exc.strerror or exc}); choose a writable folder") from None
    with exclusive(out_dir / name, "task"):
        with atomic_path(jsonl) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for doc in docs:
                fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
        atomic_write_text(yaml, task_yaml(name, jsonl, len(docs)))
    return out_dir
