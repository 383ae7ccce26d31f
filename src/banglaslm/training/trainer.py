"""The training loop: one loop for one process, DDP and FSDP (`parallel` holds what differs).

Order of one iteration `it`, which is what makes resume exact:
    evaluate if due  →  checkpoint if due  →  stop if asked  →  optimizer step `it`
A checkpoint written at `it` holds the state *before* step `it`; resuming runs step `it` next
with the same weights, optimizer moments, RNG state(s) and (stateless) batch, so the resumed
run is bit-identical to one that never stopped. More in docs/training.md.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils import clip_grads_with_norm_, get_total_norm
from tqdm import tqdm

from ..checkpoint import DamagedCheckpoint, read_state
from ..config import (
    PRESETS,
    FinetuneConfig,
    RunConfig,
    build_config,
    resolved_model,
    show_progress,
    validate,
)
from ..data.conversations import CONVERSATIONS_FORMAT
from ..data.folder import DataFolder, chars_per_token, same_splits
from ..data.loader import EVAL_STREAM, IGNORE, Prefetcher
from ..data.mixture import Mixture, open_data
from ..errors import UserError, bad_param, wrong_kind
from ..fileio import exclusive, read_json_or_fail
from ..model import GPT
from ..runfolder import RunFolder, check_fits_checkpoint, resolve_device
from . import distributed, health, parallel
from .averaging import WeightAverage
from .guard import UpdateGuard
from .memory import parameter_count, plan_passes
from .metrics import MetricsLog, plot_loss
from .optim import (
    Clock,
    autocast_context,
    cpu_has_native_bf16,
    decay_progress,
    lr_at,
    make_optimizer,
    resolve_precision,
    set_lr,
)
from .trackers import check_logger, make_tracker
from .warm_start import WarmStart

# Keys that may change when resuming (the rest must match the saved run). Changing any of
# them but the bookkeeping ones makes the continuation differ from an uninterrupted run.
RESUME_MUTABLE = {"train.max_iters", "train.eval_interval", "train.eval_iters", "train.log_interval",
                  "train.checkpoint_interval", "train.threads", "train.device", "train.learning_rate",
                  "train.compile", "train.max_skipped_updates", "train.grad_spike_factor",
                  "train.time_limit_min", "train.early_stop_patience",
                  "train.precision"}  # a Colab T4's fp16 run goes on on a CPU (fp32) or a bf16 GPU


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C/SIGTERM once the checkpoint is safely on disk."""

    def __init__(self, iteration: int, checkpoint: Path,
                 how: str = "continue with the same command plus --resume (resume=True in Python)"):
        super().__init__(f"interrupted at iteration {iteration}; saved {checkpoint}; {how}")
        self.iteration, self.checkpoint = iteration, checkpoint


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    best_val_loss: float
    last_eval: dict
    tokens_per_s: float
    seconds: float
    skipped_updates: int = 0
    time_limit_min: float = 0.0  # the limit, when it ended the run before train.max_iters
    resumed_at: int = 0  # the iteration this session started from (0: a new run); `seconds` are this session's
    stopped_early: int = 0  # train.early_stop_patience, when the run stopped early (now, or before a resume)
    warmup_iters: int = 0  # train.warmup_iters, when the time limit ended the run inside its warm-up


@dataclass
class Progress:
    """Where a run stands, besides its weights and optimizer (saved in every checkpoint)."""
    iter: int = 0
    best_val: float = math.inf
    history: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0  # seconds of training before this session (for train.time_limit_min)
    warmup_end_s: float | None = None  # seconds into the run when warm-up ended (a time-limited decay starts there)


@dataclass
class _Session:
    """What lives only while the loop runs."""
    log: MetricsLog | None
    bar: tqdm
    prefetch: Prefetcher
    window_start: float = 0.0
    window_steps: int = 0
    tokens_per_s: float = 0.0
    last_eval: dict = field(default_factory=dict)


class Trainer:
    """The loop over `data`: a prepared data folder (`DataFolder`), or anything that offers the
    same (tokenizer, tokenizer_sha256, vocab_size, meta["splits"], samplers), such as the
    conversations of fine-tuning. `warm_start` gives the initial weights of a new run."""

    def __init__(self, config: RunConfig, data: DataFolder | str | Path | list, run_dir: str | Path,
                 resume: bool = False, progress: bool | None = None, warm_start: WarmStart | None = None):
        tc = config.train
        self._notes: list[str] = []  # lines to say when training starts (after every check)
        self.data = open_data(data) if isinstance(data, (str, Path, list)) else data
        if isinstance(self.data, Mixture):  # weights chosen from token counts are not guessable
            self._notes.append(f"note: training on a mixture: {self.data.describe()}")
        self.run, self.show_progress, self.warm_start = RunFolder(run_dir), progress, warm_start
        self.dist, device_spec = distributed.setup(tc.device)
        self.parallel = parallel.choose(tc.parallel, self.dist, self.run)
        self.checkpoint = self._find_checkpoint(resume)
        self.config = _with_vocab(config, self.data.vocab_size)
        self.device = resolve_device(device_spec)
        self.precision = resolve_precision(tc.precision, self.device, self.config.model.n_embd)
        if self.precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            self._notes.append("note: this CPU has no native bf16 (AVX512_BF16 or AMX): train.precision=bf16 is "
                               "emulated and slower than fp32 here; train.precision=auto picks fp32")
        self.parallel.check(self.precision)
        # Forward passes per micro-batch: more than 1 only with train.micro_batch=auto, when memory is short.
        self.passes = plan_passes(self.config, self.device, self.dist.world_size if tc.parallel == "fsdp" else 1)
        if self.passes > 1:
            self._say(f"train.micro_batch=auto: the config is estimated not to fit in {self.device.type} memory at "
                      f"{tc.batch_size} sequences per forward pass; running {tc.batch_size // self.passes} per pass")
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.train_batches, self.val_batches = self.data.samplers(
            config.model.block_size, tc.batch_size, tc.grad_accum_steps, tc.seed, self.dist.rank, self.dist.world_size)
        self._build_model()
        self.average = WeightAverage(self.model, tc.ema_decay) if tc.ema_decay else None
        # whether the model could memorize its training split (training/health.py, leakage)
        self.n_params = parameter_count(self.config)
        self.params_per_token = self.n_params / self.train_batches.tokens_per_epoch
        self.state = Progress()
        self.guard = UpdateGuard(tc, self.precision, self._on_disk)
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        self.clock = Clock(tc.time_limit_min, self.state.elapsed_s, self.state.warmup_end_s)
        self.forward_model = self._compile(self.parallel.wrap(self.model, self.device))
        self._stop_signal: int | None = None

    # ---- setup -------------------------------------------------------------------------
    def _find_checkpoint(self, resume: bool):
        """The checkpoint to resume from (None for a new run), after checking it fits."""
        if not resume:
            if self.parallel.has_checkpoint():
                raise UserError(f"{self.run.path} already holds a run; add `resume` to continue it "
                                "or choose another `run_dir`")
            return None
        ckpt = self.parallel.load()
        if ckpt.state["tokenizer_sha256"] != self.data.tokenizer_sha256:
            raise UserError(f"the data in {self.data.path} was tokenized with a different tokenizer than the run in "
                            f"{self.run.path}; resume with the original data folder")
        recorded = (ckpt.state.get("data") or {}).get("splits")
        if recorded is not None and not same_splits(recorded, self.data.meta["splits"]):
            trained_on = (ckpt.state.get("data") or {}).get("path")  # as given then (a mixture's identity holds its paths)
            was = f" (it was trained on {trained_on})" if trained_on and trained_on != str(self.data.path) else ""
            raise UserError(f"{self.data.path} is not the data the run in {self.run.path} was trained on{was}; `resume` "
                            f"continues a run on its own data. {self._other_data_advice()}")
        return ckpt

    def _other_data_advice(self) -> str:
        return ("To train its weights on this data, start a new run from them: banglaslm train "
                f"--data {self.data.path} --out NEW_RUN --init-from {self.run.path}")

    def _build_model(self) -> None:
        """The same initial weights on every rank, sharded (FSDP) before AdamW is built on them."""
        tc = self.config.train
        torch.manual_seed(tc.seed)
        self.model = GPT(self.config.model)
        if self.warm_start is not None:
            self.warm_start.load_into(self.model)
        self.model.to(self.device)
        self.parallel.shard(self.model, self.precision)
        if self.dist.rank > 0:
            torch.manual_seed(tc.seed + self.dist.rank)  # but different dropout masks per rank
        self.optimizer = make_optimizer(self.model, tc)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _compile(self, wrapped: torch.nn.Module) -> torch.nn.Module:
        """torch.compile when asked and available; compiled now, so a missing compiler shows here."""
        if not self.config.train.compile:
            return wrapped
        try:
            compiled = torch.compile(wrapped)
            with torch.no_grad():
                self.model.eval()
                x, _ = self.train_batches.get(0, stream=EVAL_STREAM)
                compiled(x[:1].to(self.device))
            return compiled
        except Exception as exc:  # no C++ compiler, unsupported platform, ...
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            self._say(f"warning: torch.compile unavailable ({first[:160]}); training without it")
            return wrapped
        finally:
            self.model.train()

    def _on_disk(self) -> str:
        """What a stopped run can go on from, as advice (read from the checkpoint itself)."""
        latest = self.run.checkpoint("latest")
        state = read_state(latest)
        if state is None or int(state["iter"]) == 0:
            return ("no checkpoint past iteration 0 is on disk: start again with a lower train.learning_rate "
                    "(or check the data and config)")
        return (f"the last checkpoint, {latest}, is from iteration {state['iter']}: continue from it with "
                "`resume` and a lower train.learning_rate")

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            print(message, file=sys.stderr)

    # ---- state -------------------------------------------------------------------------
    def _restore(self, ckpt) -> None:
        self.parallel.restore(self.model, self.optimizer, ckpt)
        if self.average is not None:
            self.average.restore(ckpt)
        state = ckpt.state
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        elif state.get("scaler"):  # fp16's loss scale, of no use in another precision
            self._notes.append(f"note: this run trained in fp16 and goes on in {self.precision}: the same weights and "
                               "optimizer state, without fp16's loss scale; not bit for bit what fp16 would have done")
        warmed = int(state["iter"]) >= int(((state.get("config") or {}).get("train") or {}).get("warmup_iters", 0))
        warmup_end_s = state.get("warmup_end_s")
        if warmup_end_s is None and warmed:  # past warm-up without a time limit (one given now), or an older
            warmup_end_s = 0.0               # checkpoint: the decay's share is of the whole time, as it was
        self.state = Progress(int(state["iter"]), float(state["best_val"]), list(state["history"]),
                              float(state.get("elapsed_s", 0.0)), warmup_end_s)
        self.guard.restore(state)
        self._say_schedule_change(state)

    def _say_schedule_change(self, state: dict) -> None:
        """One line when a resume's train settings (a larger max_iters or time_limit_min, say) move
        the learning rate where the run stopped: the schedule is a function of them (of the share
        of the time used, in a time-limited run), so it jumps there."""
        it, tc, elapsed_s = int(state["iter"]), self.config.train, float(state.get("elapsed_s", 0.0))
        recorded = (state.get("config") or {}).get("train") or {}
        saved = type(tc)(**{**tc.__dict__, **{k: v for k, v in recorded.items() if k in tc.__dict__}})
        warmup_end_s = state.get("warmup_end_s") or 0.0
        progress = lambda cfg: (decay_progress(elapsed_s, cfg.time_limit_min * 60, warmup_end_s)
                                if cfg.time_limit_min > 0 else None)
        before, after = lr_at(it, saved, progress(saved)), lr_at(it, tc, progress(tc))
        if abs(after - before) > 0.01 * tc.learning_rate:
            changed = ", ".join(f"train.{k} {getattr(saved, k)} → {v}" for k, v in tc.__dict__.items()
                                if k in ("max_iters", "time_limit_min", "learning_rate", "warmup_iters", "min_lr_ratio",
                                         "lr_schedule", "decay_fraction") and getattr(saved, k) != v)
            self._notes.append(f"note: the learning-rate schedule changed with {changed or 'the train settings'}: at "
                               f"iteration {it} the rate goes from {before:.3g} to {after:.3g}, and follows the new "
                               "schedule from there")

    def _state(self, it: int) -> dict:
        return {
            "iter": it, "config": self.config.to_dict(), "tokenizer_sha256": self.data.tokenizer_sha256,
            "best_val": self.state.best_val, "history": self.state.history, "precision": self.precision,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "sampler": self.train_batches.state(), "world_size": self.dist.world_size,
            **self.guard.state(), "elapsed_s": self.clock.elapsed(), "warmup_end_s": self.clock.warmup_end_s,
            "data": {"path": str(self.data.path), "splits": self.data.meta["splits"]},
            "init_from": self.warm_start.provenance() if self.warm_start is not None else None,
        }

    def _save(self, it: int, improved: bool) -> Path:
        with self._averaged() as live:
            return self.parallel.save(it, self.model, self.optimizer, self._state(it), improved, extra=live)

    def _averaged(self):
        """The model holds the weight average inside (`train.ema_decay`); yields the trained
        weights to checkpoint beside it (none without averaging)."""
        return contextlib.nullcontext({}) if self.average is None else self.average.applied()

    def _write_run_files(self) -> None:
        if self.dist.is_main:
            self.run.write_header(self.config, self.data.tokenizer(), self.data.meta)
        distributed.barrier(self.dist)

    # ---- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss per trained token over the same batches each time (`eval_batches`), of the
        model the run hands on (the weight average, with train.ema_decay)."""
        with self._averaged():
            return self._evaluate()

    def _evaluate(self) -> dict[str, float]:
        """train and val; for a mixture, each folder's validation (`val/NAME`) and as `val` their
        mean by weight: the expected loss of a window drawn as training draws them (a fixed draw
        of mixed windows gave each folder's share by chance, and scored every window twice)."""
        self.model.eval()
        parts = getattr(self.val_batches, "parts", {})  # a mixture's folders, each scored on its own
        splits = [("train", self.train_batches)] + (
            [(f"val/{name}", part) for name, part in parts.items()] if parts else [("val", self.val_batches)])
        out = {split: self._mean_loss(sampler) for split, sampler in splits}
        if parts:
            val = sum(float(w) * out[f"val/{name}"] for name, w in zip(parts, self.val_batches.weights))
            out = {"train": out.pop("train"), "val": val, **out}
        self.model.train()
        return out

    def _mean_loss(self, sampler) -> float:
        """Mean loss per counted token (nats) over `sampler`'s eval batches, on every rank."""
        total = count = 0.0
        for x, y in sampler.eval_batches(self.config.train.eval_iters):
            nats, counted = self._out_of_memory_retried(lambda: self._eval_batch(x, y))
            total, count = total + nats, count + counted
        total, count = (distributed.total(v, self.dist, self.device) for v in (total, count))
        return total / count

    def _eval_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """(summed loss in nats, tokens counted) over one batch, in `self.passes` slices."""
        nats, counted = 0.0, 0
        for xs, ys in self._slices(x, y):
            with autocast_context(self.device, self.precision):
                _, loss = self.model(xs.to(self.device), ys.to(self.device))
            n = int((ys != IGNORE).sum())
            nats, counted = nats + loss.item() * n, counted + n
        return nats, counted

    def _evaluate_and_save(self, it: int, last: bool, session: _Session) -> bool:
        """Evaluate when due (every eval_interval and at the end) and judge the run's health, then
        checkpoint when due (every checkpoint_interval, at the end, and whenever validation
        improved). Returns whether this is the last iteration (an early stop makes it so)."""
        tc = self.config.train
        improved = False
        if it % tc.eval_interval == 0 or last:
            result = session.last_eval = self.evaluate()
            improved = result["val"] < self.state.best_val
            self.state.best_val = min(self.state.best_val, result["val"])
            epochs = it * self._tokens_per_step() / self.train_batches.tokens_per_epoch
            self.state.history.append({"iter": it, **result, "clipped": self.guard.clipped_spikes,
                                       "epochs": round(epochs, 4), "params_per_token": round(self.params_per_token, 4)})
            if session.log is not None:
                for split in result:
                    session.log.append({"iter": it, "split": split, "loss": result[split],
                                        "bits_per_char": self._bits_per_char(split, result[split]),
                                        "elapsed_s": round(self.clock.elapsed(), 2)})
            last = self._judge_health(it, session) or last
            if session.log is not None:
                plot_loss(session.log.records, self.run.plot_path, title=self.run.path.name)
            session.bar.set_postfix(train=f"{result['train']:.3f}", val=f"{result['val']:.3f}", refresh=False)
            self._print_eval(it, result, session)
        if it % (tc.checkpoint_interval or tc.eval_interval) == 0 or last or improved:
            self._save(it, improved)
        return last

    def _print_eval(self, it: int, result: dict[str, float], session: _Session) -> None:
        """Where no progress bar is drawn by default (output to a file, a pipe, nohup), one line
        per evaluation on stdout instead (errors and warnings keep stderr), so that a log shows
        the run going; silent when the caller turned progress off."""
        if self.show_progress is not None or not session.bar.disable or not self.dist.is_main:
            return
        losses = ", ".join(f"{split} {loss:.4f}" for split, loss in result.items())
        rate = session.tokens_per_s or self._window_rate(session)  # a resumed run may not have logged a step yet
        speed = f"{rate:,.0f} tokens/s; " if rate else ""
        print(f"iter {it:,}/{self.config.train.max_iters:,}: loss {losses}; {speed}{self.clock.elapsed():.0f} s",
              flush=True)

    def _bits_per_char(self, split: str, loss: float) -> float | None:
        """An evaluation's loss (nats per token) in bits per character of its split: the loss
        times the split's tokens per character (meta.json). Comparable across tokenizers, as
        `banglaslm eval`'s is; None for a folder that does not count characters."""
        per_token = chars_per_token(self.data.meta["splits"].get(split, {}))
        return None if per_token is None else loss / math.log(2) / per_token

    def _judge_health(self, it: int, session: _Session) -> bool:
        """Report the warning signs that appeared at this evaluation (`health`); True when
        train.early_stop_patience says an overfitting run should stop here."""
        history, patience = self.state.history, self.config.train.early_stop_patience
        for sign in health.new_signs(history, self._from_scratch()):
            self._say(sign.line())
            if session.log is not None:
                session.log.append(sign.record(it))
        if self._stops_early():
            self._say(f"early stop at step {it}: the run is overfitting and validation has not improved for "
                      f"{health.evaluations_since_best(history)} evaluations (train.early_stop_patience={patience}); "
                      "best.safetensors holds the best model")
            return True
        return False

    def _stops_early(self) -> bool:
        """train.early_stop_patience's rule: overfitting, and no new best for that many evaluations."""
        history, patience = self.state.history, self.config.train.early_stop_patience
        return bool(patience and history and health.overfitting(history)
                    and health.evaluations_since_best(history) >= patience)

    def _from_scratch(self) -> bool:
        """Whether the run began from random weights (not --init-from or a fine-tune's source)."""
        started_from = self.checkpoint.state.get("init_from") if self.checkpoint is not None else None
        return self.warm_start is None and not started_from

    # ---- one optimizer step ------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:
        if self._stop_signal is not None:  # second Ctrl-C: stop now, the last checkpoint stands
            raise KeyboardInterrupt
        self._stop_signal = signum

    def _stop_if_asked(self, it: int) -> None:
        """Save and raise TrainingInterrupted after Ctrl-C/SIGTERM. A single process checks its
        flag every step; under torchrun the ranks agree at log steps."""
        if self.dist.enabled and it % self.config.train.log_interval:
            return
        if distributed.any_rank(self._stop_signal is not None, self.dist, self.device):
            raise TrainingInterrupted(it, self._save(it, improved=False))

    def _step(self, it: int, prefetch: Prefetcher) -> tuple[torch.Tensor, float]:
        """Forward/backward over the micro-batches, then update unless the guard says skip.
        Returns (mean loss tensor, global gradient norm)."""
        tc = self.config.train
        set_lr(self.optimizer, lr_at(it, tc, self.clock.schedule_progress(it, tc.warmup_iters)))
        accum = tc.grad_accum_steps
        batches = [prefetch.get(it, micro, (it, micro + 1) if micro + 1 < accum else (it + 1, 0))
                   for micro in range(accum)]
        total = self._out_of_memory_retried(lambda: self._accumulate(batches))
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        total_norm = get_total_norm([p.grad for p in params])
        norm = self.parallel.global_norm(total_norm)
        bound = self.guard.bound(norm)
        if bound is not None:
            if bound < math.inf:
                clip_grads_with_norm_(params, bound, total_norm)
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update(it)
        return total, norm

    def _accumulate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Gradients of the mean loss over `batches` (one optimizer step's micro-batches), each
        run in `self.passes` equal slices of rows; returns the mean loss."""
        total = torch.zeros((), device=self.device)
        passes = [(x_part, y_part, x.size(0)) for x, y in batches for x_part, y_part in self._slices(x, y)]
        for i, (x, y, rows) in enumerate(passes):
            with self.parallel.micro_batch(self.forward_model, last=i == len(passes) - 1):
                with autocast_context(self.device, self.precision):
                    _, loss = self.forward_model(x, y)
                loss = loss * (x.size(0) / rows) / len(batches)
                self.scaler.scale(loss).backward()
            total += loss.detach()
        return total

    def _slices(self, x: torch.Tensor, y: torch.Tensor):
        """A batch's (inputs, targets) in `self.passes` slices of rows (at least one row each)."""
        rows = max(1, x.size(0) // self.passes)
        return zip(x.split(rows), y.split(rows))

    def _out_of_memory_retried(self, work: Callable[[], Any]) -> Any:
        """`work()`, run again in smaller slices after each out-of-memory error (see below)."""
        while True:
            try:
                return work()
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                self._split_after_oom()

    def _split_after_oom(self) -> None:
        """`train.micro_batch=auto`: run each micro-batch in twice as many slices (the global
        batch and so the loss trajectory unchanged), and say so; otherwise, or when a slice is
        already one row, stop with what to change."""
        tc, rows = self.config.train, self.config.train.batch_size // self.passes
        gc.collect()
        if tc.micro_batch != "auto" or rows < 2 or self.dist.enabled:  # odd rows: the last slice is smaller
            smaller = "lower train.batch_size and raise train.grad_accum_steps to keep the global batch"
            raise UserError(f"out of {self.device.type} memory at {rows} sequences per forward pass; " + (
                f"under torchrun the ranks cannot halve it as they go: {smaller}" if self.dist.enabled else
                "lower model.block_size or the model's size" if tc.micro_batch == "auto" else
                f"set train.micro_batch=auto, or {smaller}"))
        self.passes *= 2
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._say(f"out of {self.device.type} memory at {rows} sequences per forward pass: continuing with "
                  f"{rows // 2} per pass and {self.passes} passes per micro-batch (the same global batch)")

    def _tokens_per_step(self) -> int:
        tc = self.config.train
        return tc.batch_size * tc.grad_accum_steps * self.train_batches.block_size * self.dist.world_size

    def _window_rate(self, session: _Session) -> float:
        """Tokens per second over the steps since the last logged one."""
        return session.window_steps * self._tokens_per_step() / max(time.perf_counter() - session.window_start, 1e-9)

    def _log_step(self, it: int, loss: torch.Tensor, norm: float, session: _Session) -> None:
        session.tokens_per_s = self._window_rate(session)
        session.window_start, session.window_steps = time.perf_counter(), 0
        loss_value = distributed.mean(loss.item(), self.dist, self.device)
        if session.log is not None:
            tc = self.config.train
            lr = lr_at(it, tc, self.clock.schedule_progress(it, tc.warmup_iters))
            session.log.append({"iter": it, "loss": loss_value, "lr": lr,
                                "tokens_per_s": session.tokens_per_s, "grad_norm": norm,
                                "skipped_updates": self.guard.skipped_total,
                                "clipped_spikes": self.guard.clipped_spikes,
                                "elapsed_s": round(self.clock.elapsed(), 2)})
        session.bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{session.tokens_per_s:,.0f}", refresh=False)

    # ---- the loop ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _session(self):
        """Signal handlers, progress bar, prefetch thread and metrics log for one loop,
        all put back or closed however the loop ends."""
        tc = self.config.train
        with contextlib.ExitStack() as stack:
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    stack.callback(signal.signal, sig, signal.signal(sig, self._request_stop))
            log = None
            if self.dist.is_main:
                log = MetricsLog(self.run.metrics_path)
                stack.callback(log.close)
                log.truncate_to(self.state.iter) if self.checkpoint is not None else log.reset()
                tracker = make_tracker(tc.logger, self.run.path, self.config.to_dict(),
                                       self.state.iter if self.checkpoint is not None else None, log.records)
                if tracker is not None:
                    stack.callback(tracker.close)
                    log.mirror = tracker.log
            bar = tqdm(total=None if tc.time_limit_min > 0 else tc.max_iters, initial=self.state.iter, unit="it",
                       desc="training", dynamic_ncols=True,
                       disable=not (show_progress(self.show_progress) and self.dist.is_main))
            stack.callback(bar.close)
            prefetch = Prefetcher(self.train_batches, self.device)
            stack.callback(prefetch.close)
            self.clock.start()
            yield _Session(log, bar, prefetch, window_start=self.clock.started)

    def train(self) -> TrainResult:
        tc = self.config.train
        start = it = self.state.iter
        stopped_early = self.checkpoint is not None and self._stops_early()  # a resume of an early-stopped run
        if self.checkpoint is not None and (it >= tc.max_iters or stopped_early or
                                            self.clock.over(it, self.dist, self.device, tc.log_interval)):
            return self._result(it, start, {}, 0.0, stopped_early)  # nothing left: the run folder stays as it was
        for note in self._notes:  # said once every check has passed (a subclass's too)
            self._say(note)
        if self.dist.is_main and self.show_progress is not False:  # progress=False: silent
            print(self._model_line())
        self._write_run_files()
        with self._session() as session:
            self.model.train()
            while True:
                last = it >= tc.max_iters or self.clock.over(it, self.dist, self.device, tc.log_interval)
                if it != start or self.checkpoint is None:  # a resumed iteration was evaluated already
                    last = self._evaluate_and_save(it, last, session)
                if last:
                    break
                self._stop_if_asked(it)
                loss, norm = self._step(it, session.prefetch)
                session.window_steps += 1
                if it % tc.log_interval == 0:
                    self._log_step(it, loss, norm, session)
                it += 1
                session.bar.update(1)
        return self._result(it, start, session.last_eval, session.tokens_per_s,
                            it < tc.max_iters and self._stops_early())

    def _model_line(self) -> str:
        """What trains, where, and how: "model: 1.21M parameters (4 layers x 128 wide, block 128,
        vocab 8,000) on cpu in fp32", and with frozen weights (LoRA) how many of all train."""
        m = self.config.model
        line = (f"model: {self.n_params / 1e6:.2f}M parameters ({m.n_layer} layers x {m.n_embd} wide, block "
                f"{m.block_size}, vocab {m.vocab_size:,}) on {self.device} in {self.precision}")
        every = list(self.model.parameters())
        trained, total = sum(p.numel() for p in every if p.requires_grad), sum(p.numel() for p in every)
        return line + (f"; {trained / 1e6:.2f}M of {total / 1e6:.2f}M train (the rest is frozen)" if trained < total else "")

    def _result(self, it: int, start: int, last_eval: dict, tokens_per_s: float,
                stopped_early: bool = False) -> TrainResult:
        tc = self.config.train
        seconds = 0.0 if self.clock.started is None else time.perf_counter() - self.clock.started  # None: not begun
        clock_stopped = it < tc.max_iters and not stopped_early
        return TrainResult(self.run.path, it, self.state.best_val, last_eval, tokens_per_s, seconds,
                           self.guard.skipped_total, tc.time_limit_min if clock_stopped else 0.0, start,
                           tc.early_stop_patience if stopped_early else 0,
                           tc.warmup_iters if clock_stopped and tc.time_limit_min and it < tc.warmup_iters else 0)


def _with_vocab(config: RunConfig, data_vocab: int) -> RunConfig:
    """`config` with model.vocab_size taken from the data (0), or checked to hold it."""
    if config.model.vocab_size == 0:
        config.model.vocab_size = data_vocab
    elif config.model.vocab_size < data_vocab:
        raise UserError(f"model.vocab_size={config.model.vocab_size} is smaller than the data's "
                        f"vocabulary ({data_vocab}); leave it at 0 to take it from the data")
    return config


def train(data_dir: str | Path | list, run_dir: str | Path, config: RunConfig | None = None,
          resume: bool = False, max_iters: int | None = None, progress: bool | None = None,
          init_from: str | Path | None = None) -> TrainResult:
    """Train (or with `resume`, continue) a model on a prepared data folder, or on a mixture of
    several (`data_dir` a list of `DIR[:WEIGHT]`; see `data.mixture`).

    With `resume` and no `config`, the run's saved config is used; a given `config` must
    equal the saved one except for the keys in RESUME_MUTABLE (e.g. max_iters, which
    stretches the LR schedule, or learning_rate after a divergence). `init_from` (a run
    folder) starts a new run from that run's weights and model config (`warm_start`): with no
    `config`, its whole config; a given one's model section must be the source's, so build it
    on the source's: `build_config(base=load_model(SOURCE).config, overrides={...})` (a plain
    `build_config()` holds the default model, refused unless the source has that shape).
    """
    if resume and init_from is not None:
        raise UserError("`resume` continues this run; `init_from` starts a new one from another run's weights: "
                        "give one of them")
    if isinstance(config, RunConfig) and not resume and config.finetune != FinetuneConfig():
        raise bad_param("config", "has finetune settings, which are for `finetune`; train trains every weight on "
                                  "prepared text: leave config.finetune at its defaults")
    run = RunFolder(run_dir)

    def start() -> Trainer:
        warm_start = WarmStart(init_from) if init_from is not None else None
        settled = settle_config(run, config, resume, max_iters, warm_start)
        data = open_data(data_dir)
        if warm_start is not None:
            warm_start.check_tokenizer(data.tokenizer_sha256)
        return Trainer(settled, data, run.path, resume=resume, progress=progress, warm_start=warm_start)

    return in_run_folder(run, resume, start)


def in_run_folder(run: RunFolder, resume: bool, start: Callable[[], Trainer]) -> TrainResult:
    """Train the Trainer that `start()` builds, holding the run folder's lock, after checking
    that the folder may be written and removing what a killed writer left."""
    distributed.die_with_launcher()
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 holds the lock for the run
        return _start_and_train(run, start)
    with exclusive(run.path, "run folder"):
        run.check_writable(resume)
        run.remove_leftovers()
        return _start_and_train(run, start)


def _start_and_train(run: RunFolder, start: Callable[[], Trainer]) -> TrainResult:
    threads = torch.get_num_threads()  # train.threads is this run's, not the rest of a notebook's
    try:
        return start().train()
    except DamagedCheckpoint as exc:
        if run.checkpoints.resolve() not in exc.path.resolve().parents:  # e.g. an --init-from source
            raise
        raise exc.advising(run.resume_advice(exc.path)) from None
    finally:
        torch.set_num_threads(threads)
        distributed.teardown()


def settle_config(run: RunFolder, config: RunConfig | None, resume: bool, max_iters: int | None,
                  warm_start: WarmStart | None = None, command: str = "train") -> RunConfig:
    """The config a run trains with: a resumed run's saved config (with the changes a resume may
    make), a warm start's source config (with the given train settings), or `config`, or
    the defaults; then `max_iters`; checked, and on resume checked against the checkpoint.
    `command` (train or finetune) must be the one whose run the folder holds, if any."""
    _check_run_kind(run, command)
    if config is not None and not isinstance(config, RunConfig):
        fix = ""
        if isinstance(config, dict):
            fix = "build one with build_config(overrides={\"train.max_iters\": 100, ...})"
        elif isinstance(config, str) and config in PRESETS:
            fix = f"build one with build_config({config!r})"
        raise wrong_kind("config", config, "a RunConfig (build_config() makes one)", fix)
    config = copy.deepcopy(config)  # the caller's object stays as given: a notebook reuses it for the next run
    if resume and run.config_path.is_file():
        config = _resume_config(run.load_config(), config)
        if run.checkpoint("latest").is_file():  # before a model of that config is built
            check_fits_checkpoint(config, run.checkpoint("latest"), run.config_path)
    elif warm_start is not None:
        config = warm_start.config(config)
    config = config or build_config()
    if max_iters is not None:
        if max_iters < 1:
            raise bad_param("max_iters", f"must be at least 1, got {max_iters}")
        if max_iters < config.train.warmup_iters:
            raise bad_param("max_iters", f"{max_iters} is below the warm-up's {config.train.warmup_iters} steps "
                                         "(train.warmup_iters); give more steps, or a shorter warm-up")
        config.train.max_iters = max_iters
    done = (read_state(run.checkpoint("latest")) or {}).get("iter", 0) if resume else 0
    if config.train.max_iters < done:  # it would end before it began, and save the shorter length as its own
        raise bad_param("max_iters", f"{config.train.max_iters} is below the {done} iterations {run.path} has already "
                                     "trained; give more to train further")
    validate(config)
    check_logger(config.train.logger)
    return config


def _check_run_kind(run: RunFolder, command: str) -> None:
    """UserError when `run` holds checkpoints of the other command's run: a fine-tune cannot
    continue a pretraining run, nor pretraining a fine-tune (advice to resume would mislead)."""
    if not run.data_meta_path.is_file() or not any(run.checkpoints.glob("*")):
        return
    held = "finetune" if read_json_or_fail(run.data_meta_path).get("format") == CONVERSATIONS_FORMAT else "train"
    if held == command:
        return
    if held == "train":
        raise UserError(f"{run.path} holds a pretraining run (banglaslm train), which a fine-tune can neither "
                        f"continue nor replace; fine-tune its model into a new folder: banglaslm finetune "
                        f"{run.path} --data ... --out NEW_RUN")
    raise UserError(f"{run.path} holds a fine-tuning run (banglaslm finetune), which train can neither continue "
                    f"nor replace; to pretrain further from its weights: banglaslm train --data ... --out NEW_RUN "
                    f"--init-from {run.path}")


def _resume_config(saved: RunConfig, given: RunConfig | None) -> RunConfig:
    """The saved config, with the train settings of `given` where only RESUME_MUTABLE keys differ."""
    if given is None:
        return saved
    given.model.vocab_size = given.model.vocab_size or saved.model.vocab_size
    da, db = saved.to_dict(), given.to_dict()
    da["model"], db["model"] = resolved_model(saved.model), resolved_model(given.model)
    fixed = [f"{s}.{k} ({da[s][k]!r} → {db[s][k]!r})" for s in da for k in da[s]
             if da[s][k] != db[s][k] and f"{s}.{k}" not in RESUME_MUTABLE]
    if fixed:
        raise bad_param("resume", f"uses the run's saved config, but these differ: {', '.join(fixed)}; "
                        "drop them or start a new run")
    saved.train = given.train
    return saved
