"""The training loop: AdamW, warm-up + cosine LR, accumulation, mixed precision, evaluation,
checkpoints, exact resume, and a clean stop on Ctrl-C.

Order of one iteration `it` (this order is what makes resume exact):
    evaluate if due  →  checkpoint if due  →  stop if asked  →  optimizer step `it`
A checkpoint written at `it` holds the state *before* step `it`; resuming runs step `it` next
with the same weights, optimizer moments, RNG state and (stateless) batch, so the resumed run
is bit-identical to one that never stopped.
"""

from __future__ import annotations

import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig, build_config
from .errors import UserError
from .fileio import atomic_path, atomic_write_json
from .loader import EVAL_STREAM, BatchSampler, DataFolder
from .metrics import MetricsLog
from .model import GPT
from .runfolder import RUN_FORMAT_VERSION, RunFolder, autocast_context
from .tokenizer import Tokenizer


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C/SIGTERM once the checkpoint is safely on disk."""

    def __init__(self, iteration: int, checkpoint: Path):
        super().__init__(f"interrupted at iteration {iteration}; saved {checkpoint}; "
                         "continue with the same command plus --resume")
        self.iteration = iteration


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    best_val_loss: float
    last_eval: dict
    tokens_per_s: float
    seconds: float


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


def lr_at(it: int, cfg) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio * peak at max_iters."""
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    if it < cfg.warmup_iters:
        return peak * (it + 1) / (cfg.warmup_iters + 1)
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


class Trainer:
    def __init__(self, config: RunConfig, data_dir: str | Path, run_dir: str | Path,
                 resume: bool = False, progress: bool | None = None):
        self.run = RunFolder(run_dir)
        self.data = DataFolder(data_dir)
        self.progress = progress
        latest = self.run.checkpoint("latest")
        self.checkpoint = None
        if resume:
            if not latest.is_file():
                raise UserError(f"nothing to resume: {latest} does not exist; start without --resume")
            self.checkpoint = load_checkpoint(latest)
            if self.checkpoint.state["tokenizer_sha256"] != self.data.tokenizer_sha256:
                raise UserError(f"the data in {self.data.path} was tokenized with a different tokenizer than "
                                f"the run in {self.run.path}; resume with the original data folder")
        elif latest.is_file():
            raise UserError(f"{self.run.path} already holds a run; add --resume to continue it or choose another --out")

        if config.model.vocab_size == 0:
            config.model.vocab_size = self.data.vocab_size
        elif config.model.vocab_size < self.data.vocab_size:
            raise UserError(f"model.vocab_size={config.model.vocab_size} is smaller than the data's "
                            f"vocabulary ({self.data.vocab_size}); leave it at 0 to take it from the data")
        self.config = config
        tc = config.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = resolve_device(tc.device)
        self.precision = resolve_precision(tc.precision, self.device)
        torch.manual_seed(tc.seed)
        block, batch = config.model.block_size, tc.batch_size
        self.train_batches = BatchSampler(self.data.tokens("train"), block, batch, tc.seed, split="train")
        self.val_batches = BatchSampler(self.data.tokens("val"), block, batch, tc.seed, split="val")

        self.model = GPT(config.model).to(self.device)
        self.optimizer = make_optimizer(self.model, tc, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.start_iter = 0
        self.best_val = math.inf
        self.history: list[dict] = []
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        self._stop_signal: int | None = None

    # ---- state -------------------------------------------------------------------------
    def _restore(self, ckpt) -> None:
        self.model.load_state_dict(ckpt.model_state(), strict=False)
        opt_state = ckpt.optimizer_state()
        self.optimizer.load_state_dict(opt_state)
        state = ckpt.state
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng()
        self.start_iter = int(state["iter"])
        self.best_val = float(state["best_val"])
        self.history = list(state["history"])

    def _state(self, it: int) -> dict:
        return {
            "iter": it, "config": self.config.to_dict(), "tokenizer_sha256": self.data.tokenizer_sha256,
            "best_val": self.best_val, "history": self.history, "precision": self.precision,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "sampler": self.train_batches.state(),
            "data": {"path": str(self.data.path), "splits": self.data.meta["splits"]},
        }

    def _save(self, it: int, improved: bool) -> Path:
        latest = self.run.checkpoint("latest")
        save_checkpoint(latest, self.model, self._state(it), self.optimizer)
        if improved:
            with atomic_path(self.run.checkpoint("best")) as tmp:
                shutil.copyfile(latest, tmp)
        return latest

    def _write_run_files(self) -> None:
        self.run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run.config_path, {"format": "banglaslm-run", "version": RUN_FORMAT_VERSION,
                                                 **self.config.to_dict()})
        Tokenizer.from_file(self.data.tokenizer_path).save(self.run.tokenizer_path)
        atomic_write_json(self.run.data_meta_path, self.data.meta)

    # ---- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over the same `eval_iters` fixed batches each time (comparable evals)."""
        self.model.eval()
        out = {}
        for split, sampler in (("train", self.train_batches), ("val", self.val_batches)):
            total = 0.0
            for i in range(self.config.train.eval_iters):
                x, y = sampler.get(i, stream=EVAL_STREAM)
                with autocast_context(self.device, self.precision):
                    _, loss = self.model(x.to(self.device), y.to(self.device))
                total += loss.item()
            out[split] = total / self.config.train.eval_iters
        self.model.train()
        return out

    # ---- the loop ----------------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:
        if self._stop_signal is not None:  # second Ctrl-C: stop now, the last checkpoint stands
            raise KeyboardInterrupt
        self._stop_signal = signum

    def _step(self, it: int) -> torch.Tensor:
        tc = self.config.train
        lr = lr_at(it, tc)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(tc.grad_accum_steps):
            x, y = self.train_batches.get(it, micro)
            with autocast_context(self.device, self.precision):
                _, loss = self.model(x.to(self.device), y.to(self.device))
            loss = loss / tc.grad_accum_steps
            self.scaler.scale(loss).backward()
            total += loss.detach()
        if tc.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def train(self) -> TrainResult:
        tc = self.config.train
        self._write_run_files()
        log = MetricsLog(self.run.metrics_path)
        if self.checkpoint is not None:
            log.truncate_to(self.start_iter)
        else:
            log.reset()
        ckpt_every = tc.checkpoint_interval or tc.eval_interval
        tokens_per_step = tc.batch_size * tc.grad_accum_steps * self.config.model.block_size
        in_main = threading.current_thread() is threading.main_thread()
        old_handlers = {}
        if in_main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, self._request_stop)
        bar = tqdm(total=tc.max_iters, initial=self.start_iter, unit="it", desc="training",
                   disable=not _show(self.progress), dynamic_ncols=True)
        started = time.perf_counter()
        window_start, window_steps, tokens_per_s, last_eval = started, 0, 0.0, {}
        it = self.start_iter
        try:
            self.model.train()
            while True:
                fresh = it != self.start_iter or self.checkpoint is None
                improved = False
                if fresh and (it % tc.eval_interval == 0 or it == tc.max_iters):
                    last_eval = self.evaluate()
                    improved = last_eval["val"] < self.best_val
                    self.best_val = min(self.best_val, last_eval["val"])
                    self.history.append({"iter": it, **last_eval})
                    for split in ("train", "val"):
                        log.append({"iter": it, "split": split, "loss": last_eval[split]})
                    log.plot(self.run.plot_path, title=f"{self.run.path.name}")
                    bar.set_postfix(train=f"{last_eval['train']:.3f}", val=f"{last_eval['val']:.3f}", refresh=False)
                if fresh and (it % ckpt_every == 0 or it == tc.max_iters or improved):
                    self._save(it, improved)
                if it >= tc.max_iters:
                    break
                if self._stop_signal is not None:
                    raise TrainingInterrupted(it, self._save(it, improved=False))
                loss = self._step(it)
                window_steps += 1
                if it % tc.log_interval == 0:
                    now = time.perf_counter()  # loss.item() below is the only host sync per log
                    tokens_per_s = window_steps * tokens_per_step / max(now - window_start, 1e-9)
                    log.append({"iter": it, "loss": loss.item(), "lr": lr_at(it, tc), "tokens_per_s": tokens_per_s})
                    bar.set_postfix(loss=f"{log.records[-1]['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                    window_start, window_steps = now, 0
                it += 1
                bar.update(1)
        finally:
            bar.close()
            log.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        return TrainResult(self.run.path, it, self.best_val, last_eval, tokens_per_s,
                           time.perf_counter() - started)


def _show(progress: bool | None) -> bool:
    import sys

    return sys.stderr.isatty() if progress is None else progress


def train(data_dir: str | Path, run_dir: str | Path, config: RunConfig | None = None,
          resume: bool = False, max_iters: int | None = None, progress: bool | None = None) -> TrainResult:
    """Train (or with `resume`, continue) a model on a prepared data folder.

    With `resume` and no `config`, the run's saved config is used; a given `config` must
    equal the saved one (only `max_iters` may change, which stretches the LR schedule).
    """
    run = RunFolder(run_dir)
    if resume and run.config_path.is_file():
        saved = run.load_config()
        if config is not None:
            config.model.vocab_size = config.model.vocab_size or saved.model.vocab_size
            config.train.max_iters = saved.train.max_iters
            diff = _config_diff(saved, config)
            if diff:
                raise UserError(f"--resume uses the run's saved config, but these differ: {', '.join(diff)}; "
                                "drop them or start a new run")
        config = saved
    config = config or build_config()
    if max_iters is not None:
        config.train.max_iters = max_iters
        if config.train.warmup_iters > max_iters:
            raise UserError(f"--max-iters {max_iters} is below train.warmup_iters ({config.train.warmup_iters})")
    return Trainer(config, data_dir, run_dir, resume=resume, progress=progress).train()


def _config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k} ({da[s][k]!r} → {db[s][k]!r})" for s in da for k in da[s] if da[s][k] != db[s][k]]
