"""FSDP (`train.parallel=fsdp`, PyTorch's fully_shard) under torchrun on the CPU (gloo backend).

Why the trajectory tolerance is tight (1e-5): as with DDP, each rank takes its slice of the
same seeded global batch, so two FSDP processes with batch B/2 see exactly the windows of one
process with batch B. FSDP's reduce-scatter averages the two half-batch gradients, AdamW
updates each shard elementwise exactly as it would the full tensor, and the clipping norm is
the all-reduced global norm. With dropout off, what differs is only the order of
floating-point additions (the halves summed separately, the norm summed per shard). Measured
over these 30 steps: losses and weights differ by at most ~7e-7 (two fp32 ulps at a loss of 6),
gradient norms by ~2e-7. A real mistake (a gradient summed instead of averaged, a shard left
out of the norm, a moment restored on the wrong rows) shows up at 1e-2 or more.
"""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import set_args
from safetensors.torch import load_file
from test_distributed import SETTINGS, env, evals, kill_9, torchrun, train_args, weights

from banglaslm.cli import main
from banglaslm.config import build_config
from banglaslm.training.trainer import train

pytestmark = pytest.mark.slow
# A clip below the early gradient norms (~0.6-0.75 here), so that clipping with the all-reduced
# DTensor norm is exercised too.
CLIP = {"train.grad_clip": 0.5}
FSDP = ["--set", "train.parallel=fsdp", *set_args(CLIP)]


def fsdp_args(data, run, resume=False):
    return train_args(data, run, batch=4, resume=resume) + FSDP  # 2 ranks x 4 = the single run's 8


def launch(data, run, resume=False):
    return subprocess.run(torchrun("--standalone", "--nproc_per_node=2", *fsdp_args(data, run, resume)),
                          env=env(), capture_output=True, text=True)


def grad_norms(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["grad_norm"] for r in rows if "grad_norm" in r]


def committed(run):
    """The sharded checkpoint the pointer names: {rank file name: tensors}."""
    pointer = json.loads((run / "checkpoints" / "sharded.json").read_text())
    folder = run / "checkpoints" / pointer["folder"]
    return pointer, {p.name: load_file(str(p)) for p in sorted(folder.glob("rank*.safetensors"))}


@pytest.fixture(scope="module")
def single(tmp_path_factory, data_dir):
    """The reference: one plain process, batch 8 (in this process: no start-up cost)."""
    run = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()
    try:
        train(data_dir, run, build_config(overrides={**SETTINGS, **CLIP, "train.batch_size": 8, "train.threads": 1}),
              progress=False)
    finally:
        torch.set_num_threads(threads)  # train.threads=1 is process-wide; later tests want theirs back
    return run


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("fsdp") / "run"
    r = launch(data_dir, run)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def test_mixed_precision_policy_follows_train_precision():
    from banglaslm.training.fsdp import mixed_precision

    bf16 = mixed_precision("bf16")
    assert bf16.param_dtype == torch.bfloat16 and bf16.reduce_dtype == torch.float32
    assert mixed_precision("fp16").param_dtype == torch.float16
    assert mixed_precision("fp32").param_dtype is None and mixed_precision("fp32").reduce_dtype is None


def test_two_fsdp_processes_follow_the_single_process_trajectory(single, sharded):
    a, b = evals(single), evals(sharded)
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for (_, _, la), (_, _, lb) in zip(a, b):
        assert abs(la - lb) < 1e-5, (a, b)
    assert a[-1][2] < a[1][2]  # and it trained
    na, nb = grad_norms(single), grad_norms(sharded)
    assert len(na) == len(nb) == 6 and max(na) > CLIP["train.grad_clip"]  # clipping was active
    assert all(abs(x - y) < 1e-5 * x for x, y in zip(na, nb)), (na, nb)
    wa, wb = weights(single), weights(sharded)  # the consolidated full weights
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_checkpoint_layout_shards_and_consolidated_weights(sharded):
    ckpts = sharded / "checkpoints"
    pointer, shards = committed(sharded)
    assert pointer["iter"] == 30 and pointer["world_size"] == 2
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(["best.safetensors", "latest.safetensors",
                                                            pointer["folder"], "sharded.json"])  # old ones removed
    assert list(shards) == ["rank0.safetensors", "rank1.safetensors"]
    full = weights(sharded)
    assert "model.lm_head.weight" not in full  # the tied head is stored once, as in every run
    for name, tensor in full.items():  # the two ranks' row shards add up to each full weight
        rows = torch.cat([shards[f]["model." + name[len("model."):]] for f in shards])
        assert torch.equal(rows, tensor), name
    assert any(k.startswith("optim.") for k in shards["rank0.safetensors"])
    assert not any(k.startswith("optim.") for k in load_file(str(ckpts / "latest.safetensors")))
    names = sorted(p.name for p in sharded.iterdir())
    assert names == ["checkpoints", "config.json", "data_meta.json", "loss.png", "metrics.jsonl", "tokenizer.json"]


def test_consolidated_weights_load_and_generate(sharded):
    from banglaslm.config import SamplingParams
    from banglaslm.generation.engine import generate
    from banglaslm.runfolder import load_model

    loaded = load_model(sharded)
    assert loaded.iteration == 30
    out = generate(loaded, "আমি", SamplingParams(max_new_tokens=8, seed=1))
    assert out.tokens > 0 and isinstance(out.text, str)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finding torchrun's workers uses /proc (Linux)")
def test_resume_after_kill_9_matches_an_uninterrupted_run(sharded, data_dir, tmp_path):
    run = tmp_path / "run"
    cmd = torchrun("--standalone", "--nproc_per_node=2", *fsdp_args(data_dir, run))
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    pointer = run / "checkpoints" / "sharded.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["iter"] >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    kill_9(proc)  # at whatever the workers were doing: a step, an evaluation, or half-way through a save
    assert json.loads(pointer.read_text())["iter"] < 30
    r = launch(data_dir, run, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    # Bit-identical to the uninterrupted FSDP run: every rank's weight AND AdamW shards ...
    (_, want), (_, got) = committed(sharded), committed(run)
    assert want.keys() == got.keys()
    for f in want:
        kept = [k for k in want[f] if k.startswith(("model.", "optim."))]
        assert kept == [k for k in got[f] if k.startswith(("model.", "optim."))]
        assert all(torch.equal(want[f][k], got[f][k]) for k in kept), f
    # ... the consolidated weights, and every evaluation along the way.
    wa, wb = weights(sharded), weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert evals(sharded) == evals(run)


def test_poisoned_updates_are_skipped_alike_on_every_rank(data_dir, tmp_path):
    # An absurd learning rate wrecks the weights after one step; the gradients then go
    # non-finite. The guard sees the all-reduced DTensor norm, so both ranks skip the same
    # steps and stop together (a rank deciding differently would hang in the next collective).
    bad = {"train.learning_rate": 1e6, "train.grad_clip": 0, "train.warmup_iters": 0, "train.max_skipped_updates": 3}
    cmd = torchrun("--standalone", "--nproc_per_node=2", *fsdp_args(data_dir, tmp_path / "run"), *set_args(bad))
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert r.stderr.count("error: 3 updates in a row had a non-finite gradient") == 2, r.stderr[-3000:]


def test_resume_with_another_world_size_is_a_one_line_error(sharded, data_dir, tmp_path, capsys):
    # The CLI's own entry point, in this process (a single process: world size 1, not 2).
    run = tmp_path / "run"
    shutil.copytree(sharded, run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(fsdp_args(data_dir, run, resume=True)[2:]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sharded over 2 processes, but this resume has 1" in err, err
    assert "--nproc_per_node=2" in err
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*")}  # nothing was touched
    # A new FSDP run in a single process is refused the same way (nothing to shard over).
    assert main(fsdp_args(data_dir, tmp_path / "new")[2:]) == 2
    assert "needs 2+ processes under torchrun" in capsys.readouterr().err
