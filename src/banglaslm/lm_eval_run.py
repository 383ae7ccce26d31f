"""`banglaslm lm-eval RUN_DIR --tasks NAMES`: lm-evaluation-harness on a run folder, no export.

Why here and not in the evaluation wing: the adapter (lm_eval_model.py) scores with the
evaluation wing and generates with the generation wing. lm-eval is an optional package; only
this command needs it. Results go beside the run, in RUN_DIR/lm_eval/.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Annotated

from .config import Opt
from .errors import UserError, bad_param
from .fileio import atomic_write_text, check_writable
from .quantize import Quantize
from .runfolder import Which, load_model

RESULTS_DIR = "lm_eval"  # RUN_DIR/lm_eval/results_<UTC time>.json
INSTALL = "pip install 'banglaslm[lm-eval]'"


def _task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's task index: only the folder given when it holds every task asked for (indexing
    lm-eval's ~14,000 built-in task files takes longer than a small evaluation), else all."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise bad_param("include_path", f"is not a folder: {include_path}")
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f"in {include_path} or " if include_path else ""
        raise bad_param("tasks", f"has no task named {unknown[0]!r} {where}among lm-eval's tasks; "
                                 "`lm_eval ls tasks` lists them")
    return manager


@contextlib.contextmanager
def _quiet_git_hash():
    """lm-eval records the commit of the current folder with `git describe`, letting git print
    "fatal: not a git repository" outside one: the same question, asked without that noise
    (the same hash, or None where there is none)."""
    import lm_eval.evaluator
    from lm_eval.loggers.utils import get_commit_from_path

    def commit() -> str | None:
        try:
            return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).decode().strip()
        except (OSError, subprocess.CalledProcessError):  # no git, or no repository: lm-eval's own fallback
            return get_commit_from_path(os.getcwd())

    asked = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = commit
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = asked


def run_lm_eval(run_dir: str | Path,
                tasks: Annotated[str, Opt("comma-separated lm-eval task (or group) names, e.g. belebele_ben_Beng")],
                include_path: Annotated[str | None, Opt("a folder of your own task YAML files")] = None,
                num_fewshot: Annotated[int | None, Opt("examples shown before each question (default: the task's)")] = None,
                limit: Annotated[int | None, Opt("score only the first N examples of each task (a quick check)")] = None,
                batch_size: Annotated[int, Opt("rows per forward pass")] = 16,
                out: Annotated[str | None, Opt("folder for the results file (default: RUN_DIR/lm_eval)")] = None,
                which: Which = "best", device: str = "cpu", quantize: Quantize = "none",
                log_samples: bool = False) -> tuple[dict, Path]:
    """lm-eval's results for `tasks` on the run's model, and the JSON file they were written to.

    Errors: UserError for a run folder without a checkpoint, an unknown task, a missing
    `include_path`, bad numbers, or lm-eval not installed (naming the extra to install).
    """
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise bad_param("tasks", "names no task; e.g. --tasks belebele_ben_Beng")
    for name, value in (("batch_size", batch_size), ("limit", limit)):
        if value is not None and value < 1:
            raise bad_param(name, f"must be at least 1, got {value}")
    if num_fewshot is not None and num_fewshot < 0:
        raise bad_param("num_fewshot", f"must be 0 or more, got {num_fewshot}")
    try:
        import lm_eval
    except ImportError:
        raise UserError(f"`banglaslm lm-eval` needs lm-evaluation-harness: {INSTALL}") from None
    from .lm_eval_model import BanglaslmLM

    folder = Path(out) if out is not None else Path(run_dir) / RESULTS_DIR
    check_writable(folder, "--out")  # before the evaluation, not after it
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file; the results are written into a folder: choose a folder's path")
    loaded = load_model(run_dir, which, device=device, quantize=quantize)
    manager = _task_manager(names, include_path)
    try:
        with _quiet_git_hash():
            results = lm_eval.simple_evaluate(
                model=BanglaslmLM(loaded, batch_size=batch_size), tasks=names, num_fewshot=num_fewshot, limit=limit,
                task_manager=manager, log_samples=log_samples, bootstrap_iters=1000)
    except UserError:
        raise
    except Exception as e:  # a task's YAML or data lm-eval cannot use: its message, on one line
        detail = " ".join(str(e).split())[:300] or type(e).__name__
        raise UserError(f"lm-eval could not run {', '.join(names)}: {type(e).__name__}: {detail}; check the "
                        "task's YAML and data (or, for a built-in task, the network)") from None
    # how the scores were made: int8 or bf16 weights score a little differently from float32's
    results["banglaslm"] = {"run_dir": str(Path(run_dir).absolute()), "checkpoint": loaded.checkpoint.name,
                            "iter": loaded.iteration, "quantize": quantize, "device": str(next(loaded.model.parameters()).device),
                            "batch_size": batch_size}
    path = folder / f"results_{time.strftime('%Y-%m-%dT%H-%M-%S', time.gmtime())}.json"
    kept = {k: v for k, v in results.items() if k != "samples"}
    atomic_write_text(path, json.dumps(kept, ensure_ascii=False, indent=2, default=str) + "\n")
    return results, path
