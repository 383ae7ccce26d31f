"""The training loop: AdamW, warm-up + cosine LR, accumulation, mixed precision, evaluation,
checkpoints, exact resume, a clean stop on Ctrl-C, data parallelism under torchrun, and a
guard that skips poisoned updates.

Order of one iteration `it` (this order is what makes resume exact):
    evaluate if due  →  checkpoint if due  →  stop if asked  →  optimizer step `it`
A checkpoint written at `it` holds the state *before* step `it`; resuming runs step `it` next
with the same weights, optimizer moments, RNG state(s) and (stateless) batch, so the resumed
run is bit-identical to one that never stopped.

Under torchrun every rank runs this same loop on its slice of each global batch (see
`loader`); DDP averages gradients, so all ranks hold identical weights. Only rank 0 writes
files; collective calls (evaluation means, RNG gathering, the stop flag) keep ranks in step.
With `train.parallel=fsdp` (see `fsdp`) the model is sharded in place before the optimizer is
built, so AdamW holds only this rank's shards; checkpoints are then one file per rank.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import statistics
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig, build_config
from .errors import UserError
from .fileio import atomic_path, atomic_write_json
from .loader import EVAL_STREAM, BatchSampler, DataFolder
from .metrics import MetricsLog
from .model import GPT
from .runfolder import RUN_FORMAT_VERSION, RunFolder, autocast_context
from .tokenizer import Tokenizer

# Keys that may change when resuming (the rest must match the saved run). Changing any of
# them but the bookkeeping ones makes the continuation differ from an uninterrupted run.
RESUME_MUTABLE = {"train.max_iters", "train.eval_interval", "train.eval_iters", "train.log_interval",
                  "train.checkpoint_interval", "train.threads", "train.device", "train.learning_rate",
                  "train.compile", "train.max_skipped_updates", "train.grad_spike_factor",
                  "train.time_limit_min"}
NORM_HISTORY = 50


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C/SIGTERM once the checkpoint is safely on disk."""

    def __init__(self, iteration: int, checkpoint: Path):
        super().__init__(f"interrupted at iteration {iteration}; saved {checkpoint}; "
                         "continue with the same command plus --resume")
        self.iteration = iteration


class TrainingDiverged(UserError):
    """Too many updates in a row had non-finite or outlier gradients."""


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    best_val_loss: float
    last_eval: dict
    tokens_per_s: float
    seconds: float
    skipped_updates: int = 0


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={spec} but no CUDA GPU is available; use device=cpu or auto")
    return torch.device(spec)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' → bf16 where the hardware computes it natively, fp16 on older GPUs, else fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return "bf16" if native_bf16 else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    return precision


def lr_at(it: int, cfg, progress: float | None = None) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio * peak at max_iters, or,
    in a time-limited run, at the end of the time (`progress`: the fraction of it used)."""
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    if it < cfg.warmup_iters:
        return peak * (it + 1) / (cfg.warmup_iters + 1)
    if progress is None:
        progress = (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (peak - floor)


def make_optimizer(model: GPT, cfg, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: not on norms, biases, or a tied embedding."""
    tied = model.lm_head.weight is model.tok_emb.weight
    decay, no_decay = [], []
    for p in model.parameters():
        if p.dim() >= 2 and not (tied and p is model.tok_emb.weight):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass (CPU and CUDA in torch >= 2.4).
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=True)


class _Prefetcher:
    """Gathers the next micro-batch on a background thread while the current one computes.

    Batches are a pure function of (step, micro), so reading ahead changes nothing."""

    def __init__(self, sampler: BatchSampler, device: torch.device):
        self.sampler, self.device = sampler, device
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.pending: tuple | None = None

    def _load(self, step: int, micro: int):
        x, y = self.sampler.get(step, micro)
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def get(self, step: int, micro: int, next_key: tuple[int, int]):
        if self.pending is not None and self.pending[0] == (step, micro):
            x, y = self.pending[1].result()
        else:
            x, y = self._load(step, micro)
        self.pending = (next_key, self.pool.submit(self._load, *next_key))
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class Trainer:
    def __init__(self, config: RunConfig, data_dir: str | Path, run_dir: str | Path,
                 resume: bool = False, progress: bool | None = None):
        self.run = RunFolder(run_dir)
        self.data = DataFolder(data_dir)
        self.progress = progress
        tc = config.train
        self.dist, device_spec = distributed.setup(tc.device)
        self.fsdp = None  # the fsdp module when sharding, else None
        if tc.parallel == "fsdp":
            from . import fsdp  # imported only here: torch's FSDP + DTensor add ~1 s to start-up
            self.fsdp = fsdp
        self.checkpoint = self._find_checkpoint(resume)

        if config.model.vocab_size == 0:
            config.model.vocab_size = self.data.vocab_size
        elif config.model.vocab_size < self.data.vocab_size:
            raise UserError(f"model.vocab_size={config.model.vocab_size} is smaller than the data's "
                            f"vocabulary ({self.data.vocab_size}); leave it at 0 to take it from the data")
        self.config = config
        self.device = resolve_device(device_spec)
        self.precision = resolve_precision(tc.precision, self.device)
        if self.fsdp:
            self.fsdp.check_setup(self.dist, self.precision)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        block, batch = config.model.block_size, tc.batch_size
        rank, world = self.dist.rank, self.dist.world_size
        self.train_batches = BatchSampler(self.data.tokens("train"), block, batch, tc.seed, rank, world, "train")
        self.val_batches = BatchSampler(self.data.tokens("val"), block, batch, tc.seed, rank, world, "val")

        torch.manual_seed(tc.seed)  # the same initial weights on every rank
        self.model = GPT(config.model).to(self.device)
        if self.fsdp:  # before the optimizer, so that AdamW is built on the shards
            self.fsdp.shard_model(self.model, self.precision)
        if self.dist.rank > 0:
            torch.manual_seed(tc.seed + self.dist.rank)  # but different dropout masks per rank
        self.optimizer = make_optimizer(self.model, tc, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.start_iter = 0
        self.elapsed_before = 0.0  # seconds of training before a resume (for train.time_limit_min)
        self.progress_in_time: float | None = None  # fraction of the time limit used, if there is one
        self._started: float | None = None  # perf_counter() when this session's loop began
        self.best_val = math.inf
        self.history: list[dict] = []
        self.norms: deque[float] = deque(maxlen=NORM_HISTORY)
        self.skipped_total = 0
        self.skipped_in_row = 0
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        self.forward_model = self._wrap(self.model)
        self._stop_signal: int | None = None

    # ---- setup helpers -----------------------------------------------------------------
    def _find_checkpoint(self, resume: bool):
        """The checkpoint to resume from (None for a new run), after checking it fits."""
        latest = self.run.checkpoint("latest")
        if not resume:
            if latest.is_file() or (self.fsdp and self.fsdp.read_pointer(self.run) is not None):
                raise UserError(f"{self.run.path} already holds a run; add --resume to continue it "
                                "or choose another --out")
            return None
        if self.fsdp:
            ckpt = self.fsdp.load(self.run, self.dist)  # this rank's shards
        elif latest.is_file():
            ckpt = load_checkpoint(latest)
        else:
            raise UserError(f"nothing to resume: {latest} does not exist; start without --resume")
        if ckpt.state["tokenizer_sha256"] != self.data.tokenizer_sha256:
            raise UserError(f"the data in {self.data.path} was tokenized with a different tokenizer than "
                            f"the run in {self.run.path}; resume with the original data folder")
        return ckpt

    def _wrap(self, model: GPT) -> torch.nn.Module:
        """DDP under torchrun (FSDP already sharded the model in place); torch.compile when
        asked and available."""
        wrapped: torch.nn.Module = model
        if self.dist.enabled and not self.fsdp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
        if self.config.train.compile:
            try:
                compiled = torch.compile(wrapped)
                with torch.no_grad():  # compile now, so a missing compiler shows up here
                    model.eval()
                    x, _ = self.train_batches.get(0, stream=EVAL_STREAM)
                    compiled(x[:1].to(self.device))
                    model.train()
                wrapped = compiled
            except Exception as exc:  # no C++ compiler, unsupported platform, ...
                model.train()
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                self._say(f"warning: torch.compile unavailable ({first[:160]}); training without it")
        return wrapped

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            print(message, file=sys.stderr)

    # ---- state -------------------------------------------------------------------------
    def _restore(self, ckpt) -> None:
        if self.fsdp:
            self.fsdp.restore(self.model, self.optimizer, ckpt)
        else:
            self.model.load_state_dict(ckpt.model_state(), strict=False)
            self.optimizer.load_state_dict(ckpt.optimizer_state())
        state = ckpt.state
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng()
        rank_state = ckpt.tensors.get(f"rng.torch.rank{self.dist.rank}")
        if rank_state is not None and state.get("world_size", 1) == self.dist.world_size:
            torch.set_rng_state(rank_state)
        self.start_iter = int(state["iter"])
        self.best_val = float(state["best_val"])
        self.history = list(state["history"])
        self.norms.extend(state.get("grad_norms", []))
        self.skipped_total = int(state.get("skipped_updates", 0))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))

    def _state(self, it: int) -> dict:
        return {
            "iter": it, "config": self.config.to_dict(), "tokenizer_sha256": self.data.tokenizer_sha256,
            "best_val": self.best_val, "history": self.history, "precision": self.precision,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "sampler": self.train_batches.state(), "world_size": self.dist.world_size,
            "grad_norms": list(self.norms), "skipped_updates": self.skipped_total, "elapsed_s": self._elapsed(),
            "data": {"path": str(self.data.path), "splits": self.data.meta["splits"]},
        }

    def _save(self, it: int, improved: bool) -> Path:
        """Rank 0 writes; every rank contributes its RNG state (a collective call).
        Under FSDP every rank writes its own shards instead (see `fsdp.save`)."""
        if self.fsdp:
            return self.fsdp.save(self.run, it, self.model, self.optimizer, self._state(it), self.dist, improved)
        rng_states = distributed.gather_rng_states(self.dist)
        latest = self.run.checkpoint("latest")
        if self.dist.is_main:
            extra = {f"rng.torch.rank{r}": s for r, s in enumerate(rng_states)} if self.dist.enabled else {}
            save_checkpoint(latest, self.model, self._state(it), self.optimizer, extra_tensors=extra)
            if improved:
                with atomic_path(self.run.checkpoint("best")) as tmp:
                    shutil.copyfile(latest, tmp)
        distributed.barrier(self.dist)
        return latest

    def _write_run_files(self) -> None:
        if self.dist.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run.config_path, {"format": "banglaslm-run", "version": RUN_FORMAT_VERSION,
                                                     **self.config.to_dict()})
            Tokenizer.from_file(self.data.tokenizer_path).save(self.run.tokenizer_path)
            atomic_write_json(self.run.data_meta_path, self.data.meta)
        distributed.barrier(self.dist)

    # ---- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over the same `eval_iters` fixed global batches each time."""
        self.model.eval()
        out = {}
        for split, sampler in (("train", self.train_batches), ("val", self.val_batches)):
            total = 0.0
            for i in range(self.config.train.eval_iters):
                x, y = sampler.get(i, stream=EVAL_STREAM)
                with autocast_context(self.device, self.precision):
                    _, loss = self.model(x.to(self.device), y.to(self.device))
                total += loss.item()
            out[split] = distributed.mean(total / self.config.train.eval_iters, self.dist, self.device)
        self.model.train()
        return out

    # ---- one optimizer step ------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:
        if self._stop_signal is not None:  # second Ctrl-C: stop now, the last checkpoint stands
            raise KeyboardInterrupt
        self._stop_signal = signum

    def _step(self, it: int, prefetch: _Prefetcher | None = None) -> tuple[torch.Tensor, float, bool]:
        """Forward/backward over the micro-batches, then update unless the gradient is bad.

        Returns (mean loss tensor, gradient norm, whether the update was applied)."""
        tc = self.config.train
        lr = lr_at(it, tc, self.progress_in_time)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        accum = tc.grad_accum_steps
        for micro in range(accum):
            next_key = (it, micro + 1) if micro + 1 < accum else (it + 1, 0)
            if prefetch is not None:
                x, y = prefetch.get(it, micro, next_key)
            else:
                x, y = (t.to(self.device) for t in self.train_batches.get(it, micro))
            # DDP: average gradients across ranks only on the last micro-batch. (FSDP reduces
            # every micro-batch: skipping that would keep full, unsharded gradients on each rank.)
            sync = micro == accum - 1 or not isinstance(self.forward_model, DistributedDataParallel)
            ctx = self.forward_model.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                with autocast_context(self.device, self.precision):
                    _, loss = self.forward_model(x, y)
                loss = loss / accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf
        total_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.fsdp:  # a replicated DTensor: the same global norm on every rank, so all skip alike
            total_norm = total_norm.full_tensor()
        norm = float(total_norm)  # one host sync
        if self._bad_update(norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            return total, norm, False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, norm, True

    def _bad_update(self, norm: float) -> bool:
        """Non-finite gradient, or a norm far above the recent median: skip, don't poison.

        All ranks see the same (all-reduced) gradient, so they all decide the same way. With
        fp16 the grad scaler handles overflow itself (and lowers its scale), so inf is normal."""
        tc = self.config.train
        if not math.isfinite(norm):
            if self.precision == "fp16":
                return False
            bad = True
        else:
            spike = (tc.grad_spike_factor > 0 and len(self.norms) >= 10
                     and norm > tc.grad_spike_factor * statistics.median(self.norms))
            bad = spike
            if not bad:
                self.norms.append(norm)
        if bad:
            self.skipped_total += 1
            self.skipped_in_row += 1
            if self.skipped_in_row >= tc.max_skipped_updates:
                last = self.run.checkpoint("latest")
                raise TrainingDiverged(
                    f"{self.skipped_in_row} updates in a row were skipped (last gradient norm {norm:.3g}); "
                    f"the last good checkpoint is {last}; lower train.learning_rate and continue with --resume"
                )
        else:
            self.skipped_in_row = 0
        return bad

    # ---- the clock -----------------------------------------------------------------------
    def _elapsed(self) -> float:
        """Seconds of training in this run so far, earlier sessions of a resumed run included."""
        if self._started is None:
            return self.elapsed_before
        return self.elapsed_before + time.perf_counter() - self._started

    def _check_clock(self, it: int) -> bool:
        """Update `progress_in_time` and say whether train.time_limit_min is used up. Rank 0's
        clock decides, at every step alone and at log steps under torchrun, so that every rank
        uses the same learning rate and stops at the same step."""
        limit = self.config.train.time_limit_min * 60
        if limit <= 0:
            return False
        if not self.dist.enabled or it % self.config.train.log_interval == 0 or self.progress_in_time is None:
            self.progress_in_time = distributed.from_main(self._elapsed() / limit, self.dist, self.device)
        return self.progress_in_time >= 1.0

    # ---- the loop ----------------------------------------------------------------------
    def train(self) -> TrainResult:
        tc = self.config.train
        self._write_run_files()
        log = MetricsLog(self.run.metrics_path) if self.dist.is_main else None
        if log is not None:
            log.truncate_to(self.start_iter) if self.checkpoint is not None else log.reset()
        ckpt_every = tc.checkpoint_interval or tc.eval_interval
        tokens_per_step = tc.batch_size * tc.grad_accum_steps * self.config.model.block_size * self.dist.world_size
        in_main = threading.current_thread() is threading.main_thread()
        old_handlers = {}
        if in_main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, self._request_stop)
        bar = tqdm(total=None if tc.time_limit_min > 0 else tc.max_iters, initial=self.start_iter, unit="it", desc="training",
                   disable=not (_show(self.progress) and self.dist.is_main), dynamic_ncols=True)
        prefetch = _Prefetcher(self.train_batches, self.device)
        started = self._started = time.perf_counter()
        window_start, window_steps, tokens_per_s, last_eval = started, 0, 0.0, {}
        it = self.start_iter
        try:
            self.model.train()
            while True:
                fresh = it != self.start_iter or self.checkpoint is None
                improved = False
                last = it >= tc.max_iters or self._check_clock(it)
                if fresh and (it % tc.eval_interval == 0 or last):
                    last_eval = self.evaluate()
                    improved = last_eval["val"] < self.best_val
                    self.best_val = min(self.best_val, last_eval["val"])
                    self.history.append({"iter": it, **last_eval})
                    if log is not None:
                        for split in ("train", "val"):
                            log.append({"iter": it, "split": split, "loss": last_eval[split],
                                        "elapsed_s": round(self._elapsed(), 2)})
                        log.plot(self.run.plot_path, title=f"{self.run.path.name}")
                    bar.set_postfix(train=f"{last_eval['train']:.3f}", val=f"{last_eval['val']:.3f}", refresh=False)
                if fresh and (it % ckpt_every == 0 or last or improved):
                    self._save(it, improved)
                if last:
                    break
                # A single process checks its flag every step; ranks agree at log steps.
                check = not self.dist.enabled or it % tc.log_interval == 0
                if check and distributed.any_rank(self._stop_signal is not None, self.dist, self.device):
                    raise TrainingInterrupted(it, self._save(it, improved=False))
                loss, norm, applied = self._step(it, prefetch)
                window_steps += 1
                if it % tc.log_interval == 0:
                    now = time.perf_counter()
                    tokens_per_s = window_steps * tokens_per_step / max(now - window_start, 1e-9)
                    loss_value = distributed.mean(loss.item(), self.dist, self.device)
                    if log is not None:
                        log.append({"iter": it, "loss": loss_value, "lr": lr_at(it, tc, self.progress_in_time),
                                    "tokens_per_s": tokens_per_s, "grad_norm": norm,
                                    "skipped_updates": self.skipped_total, "elapsed_s": round(self._elapsed(), 2)})
                    bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                    window_start, window_steps = now, 0
                it += 1
                bar.update(1)
        finally:
            prefetch.close()
            bar.close()
            if log is not None:
                log.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        return TrainResult(self.run.path, it, self.best_val, last_eval, tokens_per_s,
                           time.perf_counter() - started, self.skipped_total)


def _show(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def train(data_dir: str | Path, run_dir: str | Path, config: RunConfig | None = None,
          resume: bool = False, max_iters: int | None = None, progress: bool | None = None) -> TrainResult:
    """Train (or with `resume`, continue) a model on a prepared data folder.

    With `resume` and no `config`, the run's saved config is used; a given `config` must
    equal the saved one except for the keys in RESUME_MUTABLE (e.g. max_iters, which
    stretches the LR schedule, or learning_rate after a divergence).
    """
    run = RunFolder(run_dir)
    if resume and run.config_path.is_file():
        saved = run.load_config()
        if config is not None:
            config.model.vocab_size = config.model.vocab_size or saved.model.vocab_size
            diff = _config_diff(saved, config)
            fixed = [d for d in diff if d.split(" ")[0] not in RESUME_MUTABLE]
            if fixed:
                raise UserError(f"--resume uses the run's saved config, but these differ: {', '.join(fixed)}; "
                                "drop them or start a new run")
            saved.train = config.train
        config = saved
    config = config or build_config()
    if max_iters is not None:
        config.train.max_iters = max_iters
        if config.train.warmup_iters > max_iters:
            raise UserError(f"--max-iters {max_iters} is below train.warmup_iters ({config.train.warmup_iters})")
    try:
        return Trainer(config, data_dir, run_dir, resume=resume, progress=progress).train()
    finally:
        distributed.teardown()


def _config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k} ({da[s][k]!r} → {db[s][k]!r})" for s in da for k in da[s] if da[s][k] != db[s][k]]
