"""Every CUDA path, on small models, in a few minutes on one GPU; skipped without CUDA.

Run on a GPU machine by `benchmarks/gpu_check.sh` (which also runs benchmarks/gpu_throughput.py).
Tolerances, where results are compared across devices or kernels:
- GPU against CPU in fp32: different reduction orders and kernels; a per-token log-probability
  moves by ~1e-6, so bits per character over a few thousand characters agree to 1e-4 relative.
- torch.compile against eager on the GPU: fused kernels reorder float32 sums; 30 AdamW steps
  compound that to ~1e-4 in the loss; 2e-3 relative is allowed.
- Resume after a kill on the GPU: bit-identical where cuBLAS is deterministic for the same
  shapes on one GPU (CUBLAS_WORKSPACE_CONFIG is set for the subprocesses); compared exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY_SETTINGS, records, set_args, val_losses

from banglaslm.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = {**TINY_SETTINGS, "model.n_layer": 2, "model.n_embd": 64, "model.n_head": 4, "model.block_size": 64,
       "train.batch_size": 16, "train.max_iters": 60, "train.eval_interval": 20, "train.device": "cuda",
       "model.dropout": 0.0}


def train_run(data_dir, run, **overrides) -> None:
    assert main(["train", "--data", str(data_dir), "--out", str(run), *set_args({**GPU, **overrides})]) == 0


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


# ---- precision --------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_real_bangla(data_dir, tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    run = tmp_path / precision
    train_run(data_dir, run, **{"train.precision": precision})
    losses = val_losses(run)
    assert losses[-1] < losses[0] - 0.5, losses
    steps = [r for r in records(run) if "split" not in r and "event" not in r]
    assert all(r["skipped_updates"] == 0 for r in steps)  # a healthy run skips nothing
    state = json.loads(__import__("safetensors").safe_open(
        str(run / "checkpoints" / "latest.safetensors"), "pt").metadata()["state"])
    if precision == "fp16":  # the gradient scaler's state travels with the checkpoint
        assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    else:
        assert state["scaler"] is None


def test_fp16_resume_restores_the_scaler(data_dir, tmp_path):
    run = tmp_path / "run"
    train_run(data_dir, run, **{"train.precision": "fp16", "train.max_iters": 30})
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--resume",
                 *set_args({**GPU, "train.precision": "fp16", "train.max_iters": 60})]) == 0
    uninterrupted = tmp_path / "straight"
    train_run(data_dir, uninterrupted, **{"train.precision": "fp16", "train.max_iters": 60})
    assert val_losses(run)[-1] == pytest.approx(val_losses(uninterrupted)[-1], rel=1e-3)


# ---- resume after kill -9 ----------------------------------------------------------------------
def test_resume_after_kill_matches_an_uninterrupted_run(data_dir, tmp_path):
    settings = {**GPU, "train.precision": "fp32", "train.checkpoint_interval": 10, "train.max_iters": 80}
    args = [sys.executable, "-m", "banglaslm", "train", "--data", str(data_dir), *set_args(settings)]
    straight = tmp_path / "straight"
    subprocess.run([*args, "--out", str(straight)], env=subprocess_env(), check=True, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(run)], env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = run / "checkpoints" / "latest.safetensors"
    deadline = time.time() + 300
    from safetensors import safe_open
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(safe_open(str(ckpt), "pt").metadata()["state"])["iter"] >= 30:
                break
        except Exception:  # not written yet, or being replaced
            pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run([*args, "--out", str(run), "--resume"], env=subprocess_env(), check=True, capture_output=True)
    from safetensors.torch import load_file
    a = load_file(str(straight / "checkpoints" / "latest.safetensors"))
    b = load_file(str(run / "checkpoints" / "latest.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))
    assert val_losses(straight) == val_losses(run)


# ---- checkpoints across devices --------------------------------------------------------------
def test_a_gpu_checkpoint_scores_the_same_on_the_cpu(data_dir, tmp_path, small_books):
    from banglaslm.evaluation.perplexity import evaluate_text
    from banglaslm.runfolder import load_model

    run = tmp_path / "gpu"
    train_run(data_dir, run, **{"train.precision": "fp32"})
    text = small_books[0].read_text(encoding="utf-8")[:4000]
    on_gpu = evaluate_text(load_model(run, device="cuda"), text).bits_per_char
    on_cpu = evaluate_text(load_model(run, device="cpu"), text).bits_per_char
    assert on_gpu == pytest.approx(on_cpu, rel=1e-4)


def test_a_cpu_checkpoint_resumes_on_the_gpu(data_dir, tmp_path):
    run = tmp_path / "run"
    train_run(data_dir, run, **{"train.device": "cpu", "train.precision": "fp32", "train.max_iters": 20})
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--resume",
                 *set_args({**GPU, "train.precision": "fp32", "train.max_iters": 40})]) == 0
    assert [r["iter"] for r in records(run) if r.get("split") == "val"] == [0, 20, 40]


# ---- torch.compile and attention kernels ----------------------------------------------------
def test_compile_matches_eager(data_dir, tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train_run(data_dir, eager, **{"train.precision": "fp32", "train.max_iters": 30})
    train_run(data_dir, compiled, **{"train.precision": "fp32", "train.max_iters": 30, "train.compile": True})
    assert val_losses(compiled) == pytest.approx(val_losses(eager), rel=2e-3)


def test_attention_runs_on_a_fused_kernel(trained_run):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run, device="cuda")
    idx = torch.randint(0, loaded.config.model.vocab_size, (4, loaded.config.model.block_size), device="cuda")
    # Only the fused kernels allowed: a model whose attention fell back to the math path fails.
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), torch.autocast("cuda", torch.bfloat16):
        logits, _ = loaded.model(idx)
    assert torch.isfinite(logits).all()


# ---- generation and serving ------------------------------------------------------------------
PROMPTS = ["একদিন সকালে", "আজ বাজারে", "নদীর ধারে"]


def test_greedy_generation_on_the_gpu_gives_the_cpu_tokens(trained_run):
    from banglaslm.config import SamplingParams
    from banglaslm.generation.engine import Engine
    from banglaslm.runfolder import load_model

    params = SamplingParams(greedy=True, max_new_tokens=24)
    out = {}
    for device in ("cpu", "cuda"):
        loaded = load_model(trained_run, device=device)
        engine = Engine(loaded.model, loaded.tokenizer)
        out[device] = [c[0].token_ids for c in engine.generate(PROMPTS, params)]  # one batch: continuous batching
    assert out["cuda"] == out["cpu"]


def test_the_server_answers_on_the_gpu(trained_run):
    from fastapi.testclient import TestClient

    from banglaslm.server.app import create_app

    with TestClient(create_app(trained_run, device="cuda")) as client:
        r = client.post("/v1/completions", json={"model": trained_run.name, "prompt": PROMPTS[0], "max_tokens": 12,
                                                 "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"]


# ---- torchrun with NCCL ----------------------------------------------------------------------
def test_torchrun_nccl_trains_and_resumes(data_dir, tmp_path):
    n = torch.cuda.device_count()
    run = tmp_path / "ddp"
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            "-m", "banglaslm", "train", "--data", str(data_dir), "--out", str(run),
            *set_args({**GPU, "train.precision": "bf16" if torch.cuda.is_bf16_supported() else "fp16"})]
    first = subprocess.run([*base, "--set", "train.max_iters=20"], env=subprocess_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run([*base, "--set", "train.max_iters=40", "--resume"], env=subprocess_env(),
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["iter"] for r in records(run) if r.get("split") == "val"] == [0, 20, 40]


# ---- out of memory -----------------------------------------------------------------------------
CAPPED = """
import sys, torch
from banglaslm.config import build_config
from banglaslm.training.trainer import train
torch.cuda.set_per_process_memory_fraction(float(sys.argv[3]))
config = build_config("tiny", overrides={{"model.vocab_size": 0, "train.batch_size": 64, "train.max_iters": 6,
    "train.eval_interval": 1000, "train.warmup_iters": 1, "train.device": "cuda", "train.precision": "fp32",
    "model.block_size": 512, "model.n_layer": 4, "train.micro_batch": "auto", "model.dropout": 0.0}})
train(sys.argv[1], sys.argv[2], config, progress=False)
torch.cuda.synchronize()
print("PEAK", torch.cuda.max_memory_allocated())
"""


def test_micro_batch_auto_survives_a_memory_cap(data_dir, tmp_path):
    script = tmp_path / "capped.py"
    script.write_text(CAPPED.replace("{{", "{").replace("}}", "}"), encoding="utf-8")

    def run(name, fraction):
        return subprocess.run([sys.executable, str(script), str(data_dir), str(tmp_path / name), str(fraction)],
                              env=subprocess_env(), capture_output=True, text=True, timeout=600)

    free = run("free", 1.0)
    assert free.returncode == 0, free.stderr[-3000:]
    peak = int(free.stdout.split("PEAK")[1])
    total = torch.cuda.get_device_properties(0).total_memory
    capped = run("capped", 0.6 * peak / total)  # the full micro-batch cannot fit
    assert capped.returncode == 0, capped.stderr[-3000:]
    assert capped.stderr.count("continuing with") >= 1, capped.stderr[-2000:]
    a = [r["loss"] for r in records(tmp_path / "free") if "split" not in r and "event" not in r]
    b = [r["loss"] for r in records(tmp_path / "capped") if "split" not in r and "event" not in r]
    assert b == pytest.approx(a, rel=1e-3)
