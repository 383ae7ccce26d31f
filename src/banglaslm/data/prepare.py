"""Text → a data folder (see `folder`): normalized documents, a tokenizer, token shards.

Two phases of datatrove tasks (`prepare_steps`) with one step between them keep memory
bounded however large the corpus is: the tasks read and normalize their share of the inputs
into spool files (slow sources are read once); one process chooses the split rule and trains
the tokenizer on a bounded, seeded sample of the training documents; the tasks encode their
spools into shards (the `tokenizers` Rust side uses every core). The work lives in a folder
beside the output, `.NAME.prepare`, so a rerun completes only the tasks not yet done, and
several machines sharing it can each run one task (`task_rank`); task 0 writes meta.json.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated

import numpy as np

from ..config import MAX_SEED, Opt, checked_arguments, show_progress
from ..errors import UserError, bad_param
from ..fileio import (
    as_path,
    atomic_write_json,
    check_destination,
    check_not_cwd,
    exclusive,
    read_json,
    swap_in,
)
from ..text import NORMALIZATION
from ..tokenizer import MAX_UNKNOWN_SHARE, Coverage, Tokenizer, check_bpe_vocab_size
from .clean import CleanOptions, emptied_by, loosen
from .clean import clean as run_clean
from .folder import (
    DATA_FORMAT_VERSION,
    ID_DTYPES,
    SPLITS,
    id_dtype,
    is_data_folder,
    split_stats,
    write_meta,
)
from .prepare_steps import (
    EncodeShards,
    Normalize,
    ReadInputs,
    SplitRule,
    Spool,
    bottom_sample,
    read_spooled,
    sample_path,
    spool_path,
    summary_path,
    val_threshold,
)
from .sources import (
    DEFAULT_TEXT_COLUMN,
    DOC_SPLITS,
    Source,
    check_apart,
    is_cleaned_folder,
    resolve_inputs,
    text_rate,
)
from .tasks import WorkerDied, exit_if_reimported, run_tasks
from .tokenizer_choice import TOKENIZER_HELP, load_tokenizer

MIN_VAL_TOKENS = 2_048  # below this a validation loss averages a handful of windows (8 of the small preset's 256)
WAIT_SECONDS = 2.0  # how often a task of several machines looks whether the others are done


@dataclass
class PrepareResult:
    out_dir: Path
    meta: dict | None  # None for a task other than 0 of several machines: task 0 writes the meta
    seconds: float
    input_bytes: int
    task_rank: int | None = None
    waited: float = 0.0  # seconds spent waiting for the tasks of other machines
    finished_by_task0: bool = False  # task 0 wrote the meta before this task (not 0) returned
    kept: bool = False  # the folder was already prepared from these inputs and options: nothing was done

    def summary(self) -> str:
        speed = f"({text_rate(self.input_bytes, self.seconds - self.waited)} of normalized text" + \
            (f"; {self.waited:.1f} s of it waiting for other tasks)" if self.waited >= 1 else ")")
        if self.meta is None:
            then = "task 0 has finished the folder" if self.finished_by_task0 else \
                "task 0 writes meta.json once every task is done"
            return f"task {self.task_rank} of {self.out_dir} done in {self.seconds:.1f} s {speed}; {then}"
        lines = [f"kept {self.out_dir}: it is prepared from these inputs (unchanged) with these options"
                 if self.kept else f"prepared {self.out_dir} in {self.seconds:.1f} s {speed}"]
        if self.meta.get("cleaning"):
            c = self.meta["cleaning"]
            lines.append(f"cleaned first: kept {c['kept']:,} of {c['documents']:,} documents"
                         + (f" ({c['empty_documents']:,} empty ones skipped)" if c.get("empty_documents") else "")
                         + f"; what went and why: {self.out_dir}/clean_report.md")
        if without := self.meta.get("inputs_without_text"):
            lines.append(f"note: {len(without):,} input(s) gave no text (empty, or a table without rows): "
                         f"{', '.join(without[:5])}{', ...' if len(without) > 5 else ''}")
        if self.meta.get("empty_documents"):
            lines.append(f"skipped {self.meta['empty_documents']:,} empty document(s) (a row without the text column, "
                         "a null or missing cell, or nothing left after normalization)")
        tok = self.meta["tokenizer"]
        asked = self.meta.get("vocab_size_asked")
        short = f" (asked {asked:,}: the text has no more pairs of tokens seen twice to merge)" \
            if tok["kind"] == "bpe" and asked and tok["vocab_size"] < asked else ""
        lines.append(f"tokenizer: {tok['kind']}, vocabulary {tok['vocab_size']:,}{short}, ids stored as "
                     f"{self.meta['dtype']}")
        for split in SPLITS:
            s = self.meta["splits"][split]
            c = self.meta.get("coverage", {}).get(split)
            covered = "" if c is None else (f", {c['unknown_share']:.2%} unknown / {c['byte_fallback_share']:.2%} "
                                             "byte-fallback tokens")
            lines.append(f"{split:>5}: {s['documents']:,} document{'s' if s['documents'] != 1 else ''}, "
                         f"{s['chars']:,} characters, "
                         f"{s['tokens']:,} tokens in {len(s['shards'])} shard(s), "
                         f"{s['chars'] / max(s['tokens'], 1):.2f} characters/token{covered}")
        return "\n".join(lines)

    def warnings(self) -> list[str]:
        """What a training run on this folder would trip over, with the fix (one line each)."""
        return [] if self.meta is None else val_split_warnings(self.meta)


def val_split_warnings(meta: dict) -> list[str]:
    """A warning when a split is too short to use or far from the share `val_fraction` asked:
    a few documents of very different lengths (a short README drawn into validation while a
    whole book went to training, or the reverse)."""
    val, train = meta["splits"]["val"]["tokens"], meta["splits"]["train"]["tokens"]
    asked, share = meta["val_fraction"], val / max(val + train, 1)
    if val < MIN_VAL_TOKENS or share < asked / 4:
        problem = "too little to score a model on"
        other_fix = "add text" if share >= 0.5 else "raise `val_fraction` or add text"  # raising would starve training
    elif share > 0.5:
        problem, other_fix = "more text than the training split", "lower `val_fraction`"
    elif share > 4 * asked:  # two books, one of them drawn into validation: training loses a third of the text
        problem, other_fix = "far more than asked, taken from training", "lower `val_fraction`"
    else:
        return []
    by_file = meta.get("doc_split") == "file" and meta.get("text_files", 1) > 0  # tables: one row, one document
    fix = "split the text into more documents with `doc_split` page" if by_file \
        else other_fix
    return [f"the validation split holds {val:,} tokens ({share:.2%} of the text, `val_fraction` asked "
            f"{asked * 100:g}%): {problem}; {fix}"]  # :g: 0.1% stays 0.1%, not 0%


@checked_arguments
def prepare(
    inputs: list[str], out_dir: str | Path,
    tokenizer: Annotated[str | Path, Opt(TOKENIZER_HELP)] = "bpe",
    vocab_size: Annotated[int, Opt("BPE vocabulary size")] = 8000,
    val_fraction: Annotated[float, Opt("share of documents held out for validation (by a seeded hash of each "
                                       "document's text)")] = 0.05,
    seed: Annotated[int, Opt("seed of the train/val document split and of the tokenizer's sample")] = 42,
    text_column: Annotated[str | None, Opt(f"the column or field holding the text in tables and datasets "
                                           f"(default '{DEFAULT_TEXT_COLUMN}')")] = None,
    doc_split: Annotated[str, Opt("what one document is in .txt/.md files", DOC_SPLITS)] = "file",
    dtype: Annotated[str, Opt("token id storage", ID_DTYPES)] = "auto",
    allow_unknown: Annotated[bool, Opt(f"keep data with more than {MAX_UNKNOWN_SHARE:.0%} unknown tokens (the text "
                                       "the tokenizer cannot represent is lost)")] = False,
    tokenizer_sample: Annotated[int, Opt("characters of training documents (a seeded sample of whole documents) "
                                         "the BPE tokenizer learns from")] = 200_000_000,
    shard_tokens: Annotated[int, Opt("most token ids in one shard file")] = 100_000_000,
    workers: Annotated[int, Opt("tasks run at once on this machine (processes)")] = 1,
    tasks: Annotated[int | None, Opt("tasks the inputs are cut into, by whole files (default: --workers); "
                                     "the same on every machine")] = None,
    task_rank: Annotated[int | None, Opt("run only this task (0 .. tasks-1): one of several machines writing "
                                         "into the same output on shared storage; task 0 finishes the folder "
                                         "once every task is done")] = None,
    clean: Annotated[bool, Opt("clean the documents first, on this machine: `banglaslm clean`'s steps with its "
                               "options (report in clean_report.md)")] = False,
    clean_options: CleanOptions | None = None,
    overwrite: Annotated[bool, Opt("replace a data folder prepared from other inputs or options (a run trained "
                                   "on it can then no longer resume)")] = False,
    progress: bool | None = None,
) -> PrepareResult:
    """Prepare a data folder from `inputs` (files, folders, globs, tables or hf:NAME; see
    `sources`). `progress=None` shows bars only on a terminal. Raises UserError, leaving any
    earlier data folder at `out_dir` untouched, for bad options or inputs."""
    exit_if_reimported()
    tokenizer = str(tokenizer) if isinstance(tokenizer, Path) else tokenizer
    tasks = _check_options(val_fraction, seed, dtype, tokenizer, vocab_size, tokenizer_sample, shard_tokens,
                           workers, tasks, task_rank)
    _check_bpe_only(tokenizer, vocab_size=vocab_size, tokenizer_sample=tokenizer_sample)
    if overwrite and task_rank is not None:
        raise bad_param("overwrite", "replaces a data folder on one machine; for tasks on several machines delete "
                                     "the folder first, then start every task")
    if clean and task_rank is not None:
        raise bad_param("clean", "runs on one machine: clean with `banglaslm clean INPUT... --out DIR` first, then "
                                 "prepare DIR on every machine")
    defaults = CleanOptions()
    changed = [f.name for f in fields(CleanOptions) if clean_options is not None
               and getattr(clean_options, f.name) != getattr(defaults, f.name)]
    if changed and not clean:  # options given for a cleaning that would not run
        raise bad_param(changed[0], "filters documents only with `clean`; add `clean`, or drop it")
    clean_options = (clean_options or CleanOptions()) if clean else None
    if clean_options is not None:
        clean_options.validate()
    existing = load_tokenizer(tokenizer) if tokenizer not in ("bpe", "char") else None
    if existing is not None or tokenizer == "bpe":  # before any reading: the ids must fit the storage
        id_dtype(existing.vocab_size if existing is not None else vocab_size, dtype)
    sources = resolve_inputs(inputs)
    out = as_path(out_dir, "out_dir", "an output folder")
    check_not_cwd(out, "data folder")
    check_apart(inputs, sources, out, "data folder")
    _note_unused_options(sources, doc_split, text_column)
    if existing is not None and (note := existing.round_trip_note()):
        print(f"note: {note}; a tokenizer that keeps the text as it is (--tokenizer bpe, a SentencePiece model) "
              "avoids this", file=sys.stderr)
    plan = {"sources": [_identity(s) for s in sources], "tokenizer": tokenizer, "vocab_size": vocab_size,
            "tokenizer_sha256": existing.sha256 if existing is not None else None,  # a file given may change
            "val_fraction": val_fraction, "seed": seed, "text_column": text_column, "doc_split": doc_split,
            "dtype": dtype, "tokenizer_sample": tokenizer_sample, "shard_tokens": shard_tokens, "tasks": tasks,
            "clean": asdict(clean_options) if clean_options is not None else None}
    job = _Job(out, plan, existing, show_progress(progress) and workers == 1, workers)
    start = time.perf_counter()
    if task_rank is None and (kept := _prepared_already(out, plan, overwrite)) is not None:
        return PrepareResult(out, kept, time.perf_counter() - start, kept["input_bytes"], kept=True)
    if task_rank is None:
        meta = job.run_all(clean_options, allow_unknown)
    else:
        meta = job.run_one(task_rank, allow_unknown)
        if meta is None:
            return PrepareResult(out, None, time.perf_counter() - start, job.read_bytes, task_rank, job.waited,
                                 job.finished_elsewhere)
    return PrepareResult(out, meta, time.perf_counter() - start, meta["input_bytes"], task_rank, job.waited)


def _check_bpe_only(tokenizer: str, **given) -> None:
    """UserError for a setting of the BPE tokenizer prepare trains (changed from its default)
    given with another tokenizer, which would ignore it."""
    if tokenizer == "bpe":
        return
    defaults = inspect.signature(prepare).parameters
    for name, value in given.items():
        if value != defaults[name].default:
            brings = "learns its vocabulary from every character seen" if tokenizer == "char" \
                else "brings its own vocabulary"
            raise bad_param(name, f"applies to the BPE tokenizer prepare trains (--tokenizer bpe); --tokenizer "
                                  f"{tokenizer} {brings}: drop it")


def _note_unused_options(sources: list[Source], doc_split: str, text_column: str | None) -> None:
    """A note for an option that no input is of the kind to use: it was ignored."""
    texts = any(source.kind == "text" for source in sources)
    if doc_split != "file" and not texts:
        print(f"note: --doc-split {doc_split} applies to .txt/.md files and every input is a table (one row, one "
              "document): ignored", file=sys.stderr)
    if text_column is not None and all(source.kind == "text" for source in sources):
        print(f"note: --text-column {text_column} applies to tables (.jsonl, .json, .csv, .tsv, .parquet, hf:) and "
              "every input is a text file: ignored", file=sys.stderr)


def _check_options(val_fraction, seed, dtype, tokenizer, vocab_size, tokenizer_sample, shard_tokens, workers,
                   tasks, task_rank) -> int:
    """UserError for an option out of range; the number of tasks."""
    if not 0 < val_fraction < 1:
        raise bad_param("val_fraction", f"must be between 0 and 1 (exclusive), got {val_fraction}")
    if not 0 <= seed <= MAX_SEED:
        raise bad_param("seed", f"must be in [0, {MAX_SEED}], got {seed}")
    if dtype not in ID_DTYPES:
        raise bad_param("dtype", f"must be one of {', '.join(ID_DTYPES)}, got {dtype}")
    if tokenizer == "bpe":
        check_bpe_vocab_size(vocab_size)
    for name, value, least in (("tokenizer_sample", tokenizer_sample, 1), ("shard_tokens", shard_tokens, 2),
                               ("workers", workers, 1), ("tasks", tasks, 1)):
        if value is not None and value < least:
            raise bad_param(name, f"must be at least {least}, got {value}")
    tasks = tasks or workers
    if task_rank is not None and not 0 <= task_rank < tasks:
        raise bad_param("task_rank", f"must be in [0, {tasks - 1}] for {tasks} tasks, got {task_rank}")
    return tasks


def plan_sha256(plan: dict) -> str:
    """What a data folder was prepared from (inputs, as `_identity` records them, and options),
    however its paths were spelled: files by their resolved paths, a given tokenizer by its hash."""
    sources = [[kind, location if kind == "hf" else str(Path(location).resolve()), *rest]
               for kind, location, *rest in plan["sources"]]
    tokenizer = plan["tokenizer"] if plan["tokenizer_sha256"] is None else None
    key = {**plan, "sources": sources, "tokenizer": tokenizer, "normalization": NORMALIZATION,
           "format": DATA_FORMAT_VERSION}  # what a newer banglaslm writes differently
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def _prepared_already(out: Path, plan: dict, overwrite: bool) -> dict | None:
    """The meta of `out` when it is a data folder prepared by this same plan (nothing to do;
    never for `hf:` inputs, whose rows may change); None when it is no data folder, or another
    plan's and `overwrite`. Another plan's is refused otherwise: a run trained on it resumes and
    evaluates only with it."""
    if not is_data_folder(out):
        return None
    meta = read_json(out / "meta.json")
    recorded = meta.get("plan_sha256")
    same = recorded == plan_sha256(plan)
    if same and not any(kind == "hf" for kind, *_ in plan["sources"]):
        return meta
    if overwrite:
        return None
    what = ("prepared from a dataset (hf:), whose rows may have changed under its name" if same else
            "prepared from other inputs or options" if recorded else
            "of an earlier banglaslm, which did not record what it was prepared from")
    raise UserError(f"{out} is a data folder {what}; runs trained on it need it to resume and to evaluate: choose "
                    "another output folder, or add `overwrite` to replace it")


def _identity(source) -> list:
    """A source as the work folder's plan records it: a file with its size and modification
    time, so a resumed prepare never reuses what was read from an older version of it."""
    if source.kind == "hf":
        return [source.kind, source.location]
    stat = Path(source.location).stat()
    return [source.kind, source.location, stat.st_size, stat.st_mtime_ns]


class _OtherTaskFailed(UserError):
    """Another machine's task failed: this one stops (and does not count as failed itself)."""


def work_folder(out: Path) -> Path:
    """Where a prepare into `out` keeps its finished work until it completes (a rerun goes on from it)."""
    return out.parent / f".{out.name}.prepare"


class _FinishedByTask0(Exception):
    """Task 0 finished the folder while this task waited for the last summaries: this task is done."""


class _Job:
    """One prepare's work folder and its phases."""

    def __init__(self, out: Path, plan: dict, existing: Tokenizer | None, progress: bool, workers: int):
        self.out, self.plan, self.existing, self.progress, self.workers = out, plan, existing, progress, workers
        self.work = work_folder(out)
        self.started = time.time()  # a failure another machine reported before this is an old one
        self.waited = 0.0
        self.read_bytes = 0  # the normalized text this process read (a task's own rate)
        self.finished_elsewhere = False  # task 0 finished the folder while this task waited
        self.tasks = plan["tasks"]
        self.reading = ([Source(kind, location) for kind, location, *_ in plan["sources"]], plan["text_column"],
                        plan["doc_split"])  # what the read phase reads: the inputs, or their cleaned copy

    def clean(self, options: CleanOptions) -> None:
        """Clean the inputs into the work folder (once), and read that from then on."""
        cleaned = self.work / "cleaned"
        if not is_cleaned_folder(cleaned):
            run_clean([source[1] for source in self.plan["sources"]], cleaned, options,
                      text_column=self.plan["text_column"], doc_split=self.plan["doc_split"], workers=self.workers)
        report = read_json(cleaned / "report.json")
        if report["kept"] == 0:
            raise UserError(f"cleaning removed every document ({report['documents']:,}), the last of them by "
                            f"{emptied_by(report['steps'])}; {loosen(report['steps'])}, or see its report: "
                            "banglaslm clean INPUT... --out DIR")
        self.reading = (resolve_inputs([str(cleaned)]), None, "file")

    def run_all(self, clean_options: CleanOptions | None, allow_unknown: bool) -> dict:
        """Every task here, holding the output's lock; the meta."""
        with exclusive(self.out, "data folder"):
            check_destination(self.out, "data folder", is_data_folder)
            self.open(restart=True)
            try:
                if clean_options is not None:
                    self.clean(clean_options)
                self.run_phase("read", range(self.tasks))
                self.choose()
                self.run_phase("encode", range(self.tasks))
                return self.finish(allow_unknown)
            except WorkerDied:  # the tasks done are good: the same command again does the rest
                raise
            except Exception:  # bad input, a full disk, ...: nothing half-made stays (Ctrl-C keeps it to resume)
                shutil.rmtree(self.work, ignore_errors=True)
                raise

    def run_one(self, rank: int, allow_unknown: bool) -> dict | None:
        """Task `rank` of several machines; task 0 also chooses the tokenizer and finishes the
        folder (the meta), the others return None once their shards are written. A task that
        fails says so in the work folder, so that the others stop instead of waiting for it."""
        check_destination(self.out, "data folder", is_data_folder)
        if is_data_folder(self.out) and not self.work.exists():  # a task run again after task 0 finished
            raise UserError(f"{self.out} is already a finished data folder (task 0 wrote its meta.json); to prepare "
                            "it again with several machines, delete it first, then start every task")
        self.open(restart=False)
        failed = self.work / "failed" / f"{rank:05d}.json"
        failed.unlink(missing_ok=True)  # this task's earlier failure, if any, is being retried
        try:
            self.run_phase("read", [rank])
            self.read_bytes = self.input_bytes([rank])
            self.choose() if rank == 0 else self.wait_for("choice", [self.work / "split.json"])
            self.run_phase("encode", [rank])
            if rank != 0:
                return None
            with exclusive(self.out, "data folder"):
                return self.finish(allow_unknown)
        except _FinishedByTask0:  # its work folder, with the summaries waited for, went with it
            self.finished_elsewhere = True
            return None
        except Exception as exc:
            if self.work.exists() and not isinstance(exc, _OtherTaskFailed):
                atomic_write_json(failed, {"error": str(exc) or type(exc).__name__})
            raise

    def open(self, restart: bool) -> None:
        """Resume the work folder of the same plan; another plan's is replaced (`restart`, when
        this process alone writes) or refused (tasks of several machines must agree)."""
        plan_path = self.work / "plan.json"
        self.work.mkdir(parents=True, exist_ok=True)  # tasks of several machines may start at once
        try:
            if read_json(plan_path) == self.plan:
                return
        except FileNotFoundError:
            atomic_write_json(plan_path, self.plan)
            return
        except ValueError:
            pass
        if not restart:
            raise UserError(f"{self.work} holds an unfinished prepare with other inputs or options; give every "
                            f"task the same ones, or delete {self.work}")
        shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        atomic_write_json(plan_path, self.plan)

    def run_phase(self, phase: str, ranks) -> None:
        """Run the phase's tasks `ranks` (a contiguous range) here, then wait for all tasks."""
        ranks = list(ranks)
        if phase == "read":
            sample = self.plan["tokenizer_sample"] if self.plan["tokenizer"] == "bpe" else 0  # only BPE trains on one
            steps = [ReadInputs(*self.reading, self.progress),
                     Normalize(), Spool(self.work, self.plan["seed"], self.plan["val_fraction"], sample)]
        else:
            np_dtype = read_json(self.work / "split.json")["dtype"]
            steps = [EncodeShards(self.work, self.plan["seed"], np_dtype, self.plan["shard_tokens"], self.progress)]
        logs = self.work / "logs" / phase
        run_tasks(steps, self.tasks, logs, ranks, self.workers, "prepare")
        self.wait_for(phase, [summary_path(self.work, phase, r) for r in range(self.tasks)])

    def wait_for(self, what: str, paths: list[Path]) -> None:
        """Block until every one of `paths` exists (written by tasks on other machines); a task
        that failed on its machine stops the wait with its error, and task 0 finishing the
        folder (which removes the work folder and the paths with it) ends it."""
        said = False
        while missing := [p for p in paths if not p.exists()]:
            if not self.work.exists() and is_data_folder(self.out):
                raise _FinishedByTask0
            for failure in sorted((self.work / "failed").glob("*.json")):
                if failure.stat().st_mtime >= self.started:  # an older one was before this attempt
                    raise _OtherTaskFailed(f"task {int(failure.stem)} of this prepare failed on its machine: "
                                           f"{read_json(failure)['error']} (fix that, then start every task again: "
                                           "the tasks done are kept)")
            if not said:
                print(f"waiting for {len(missing)} more task(s) of the {what} phase (other machines) in {self.work}",
                      flush=True)
                said = True
            time.sleep(WAIT_SECONDS)
            self.waited += WAIT_SECONDS

    def input_bytes(self, ranks) -> int:
        return sum(read_json(summary_path(self.work, "read", r))["bytes"] for r in ranks)

    def empty_documents(self) -> int:
        """Documents (rows, paragraphs, ...) that normalization left empty, in every task: skipped."""
        return sum(read_json(summary_path(self.work, "read", r)).get("empty", 0) for r in range(self.tasks))

    def inputs_without_text(self) -> list[str]:
        """The inputs that gave no document with text (an empty file, a table of no rows or of
        empty cells), by name; none counted when the read phase read cleaned copies."""
        if (self.work / "cleaned").exists():
            return []
        reads = [read_json(summary_path(self.work, "read", r)) for r in range(self.tasks)]
        with_text = {i for r in reads for i in r.get("sources_with_text", range(len(self.plan["sources"])))}
        return [location for i, (_, location, *_) in enumerate(self.plan["sources"]) if i not in with_text]

    def choose(self) -> None:
        """Between the phases, once: the split rule from every task's extremes, and the
        tokenizer (given, or trained on the sample); written to tokenizer.json and split.json."""
        if (self.work / "split.json").exists():
            return
        reads = [read_json(summary_path(self.work, "read", r)) for r in range(self.tasks)]
        text_files = any(kind == "text" for kind, *_ in self.plan["sources"])
        rule = _split_rule(reads, self.plan["val_fraction"], text_files)
        tok = self.existing or self._train_tokenizer(reads, rule)
        tok.save(self.work / "tokenizer.json")
        np_dtype = id_dtype(tok.vocab_size, self.plan["dtype"])
        atomic_write_json(self.work / "split.json", {**asdict(rule), "dtype": np.dtype(np_dtype).name})

    def _train_tokenizer(self, reads: list[dict], rule: SplitRule) -> Tokenizer:
        """BPE trained on the sample of training documents (validation text never shapes the
        vocabulary), or a char tokenizer over every character seen."""
        if self.plan["tokenizer"] == "char":
            return Tokenizer.build_char(set("".join(r["chars"] for r in reads)))
        tasks = [np.load(sample_path(self.work, rank), allow_pickle=False) for rank in range(self.tasks)]
        candidates = np.concatenate([np.insert(rows, 2, rank, axis=1) for rank, rows in enumerate(tasks)])
        chosen = [[int(rank), int(offset)] for _, _, rank, offset, split_hash in
                  bottom_sample(candidates, self.plan["tokenizer_sample"]) if not rule.is_val(int(split_hash))]
        if rule.highest < rule.threshold:  # the one training document validation's threshold left out
            chosen.append(next([rank, r["highest"][1]] for rank, r in enumerate(reads)
                               if r["highest"] and r["highest"][0] == rule.highest))
        texts = (text for rank, offset in chosen for text in read_spooled(spool_path(self.work, rank), [offset]))
        return Tokenizer.train_bpe(texts, self.plan["vocab_size"], length=len(chosen), show_progress=self.progress)

    def finish(self, allow_unknown: bool) -> dict:
        """Gather the tasks' shards into meta.json, drop the work files, and put the folder in place."""
        encoded = [read_json(summary_path(self.work, "encode", r)) for r in range(self.tasks)]
        coverage = {s: Coverage() for s in SPLITS}
        for e in encoded:
            for split in SPLITS:
                coverage[split].add(Coverage.from_dict(e["coverage"][split]))
        _check_coverage(coverage, allow_unknown)
        splits = {s: split_stats([shard for e in encoded for shard in e["shards"][s]]) for s in SPLITS}
        tok, np_dtype = Tokenizer.from_file(self.work / "tokenizer.json"), read_json(self.work / "split.json")["dtype"]
        input_bytes, empty = self.input_bytes(range(self.tasks)), self.empty_documents()
        sources, without_text = [location for _, location, *_ in self.plan["sources"]], self.inputs_without_text()
        cleaning = None
        if (self.work / "cleaned" / "report.json").exists():
            report = read_json(self.work / "cleaned" / "report.json")
            cleaning = {key: report.get(key) for key in ("documents", "empty_documents", "kept")}
        for name in ("report.json", "report.md"):  # what cleaning removed, and why
            if (self.work / "cleaned" / name).exists():
                (self.work / "cleaned" / name).replace(self.work / f"clean_{name}")
        for name in ("cleaned", "spool", "read", "encode", "logs", "plan.json", "split.json"):
            path = self.work / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        meta = write_meta(self.work, tok, np.dtype(np_dtype).type, splits, {
            "val_fraction": self.plan["val_fraction"], "seed": self.plan["seed"], "doc_split": self.plan["doc_split"],
            "text_files": sum(kind == "text" for kind, *_ in self.plan["sources"]),  # what doc_split applies to
            # what the tokenizer and the tables' text came from, as given (--tokenizer, --text-column)
            "tokenizer_source": str(self.plan["tokenizer"]),
            "text_column": (self.plan["text_column"] or DEFAULT_TEXT_COLUMN)
            if any(kind != "text" for kind, *_ in self.plan["sources"]) else None,
            # the size a BPE trained here was asked for (a tokenizer given by path was asked nothing)
            "vocab_size_asked": self.plan["vocab_size"] if self.plan["tokenizer"] == "bpe" else None,
            "tokenizer_sample": self.plan["tokenizer_sample"], "input_bytes": input_bytes,
            "empty_documents": empty, "cleaning": cleaning, "sources": sources, "inputs_without_text": without_text,
            "coverage": {split: c.to_dict() for split, c in coverage.items()}, "plan_sha256": plan_sha256(self.plan)})
        swap_in(self.work, self.out)
        return meta


def _split_rule(reads: list[dict], val_fraction: float, text_files: bool = True) -> SplitRule:
    """The rule from the tasks' extremes; UserError when the corpus cannot be split in two.
    `text_files`: whether any input is a text file (doc_split applies to those alone)."""
    n_docs, empty = sum(r["documents"] for r in reads), sum(r["empty"] for r in reads)
    if n_docs == 0:
        raise UserError("the inputs hold no text (every document is empty after normalization)" if empty else
                        "the inputs hold no documents (no rows, or empty files)")
    more = "add files or split the text with `doc_split` page (or paragraph, line)" if text_files else \
        "add rows or files (a table's row is a document; `doc_split` is for text files)"
    if n_docs < 2:
        raise UserError(f"found only 1 document, but train/val are split by document; {more}")
    lowest = min(r["lowest"][0] for r in reads if r["lowest"])
    highest = max(r["highest"][0] for r in reads if r["highest"])
    if lowest == highest:
        split = " or split it with `doc_split` page (or paragraph, line)" if text_files else " (rows or files)"
        raise UserError(f"all {n_docs:,} documents are the same text, but train/val need different documents; "
                        f"add other text{split}")
    return SplitRule(val_threshold(val_fraction), lowest, highest)


def _check_coverage(coverage: dict[str, Coverage], allow_unknown: bool) -> None:
    """A UserError when a split's text would be lost to unknown tokens (`Coverage.loses_text`)."""
    for split, c in coverage.items():
        if c.loses_text() and not allow_unknown:
            raise UserError(f"the tokenizer cannot represent this text: {split} has {c.describe()}; use a "
                            "tokenizer that covers it, or accept the loss with `allow_unknown`",
                            param="allow_unknown")
