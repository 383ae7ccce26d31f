"""Data-parallel training under torchrun on the CPU (gloo backend).

Why the tolerance is tight: every rank takes its slice of the same seeded global batch, so
two processes with batch B/2 compute gradients on exactly the windows one process with batch
B sees; DDP averages them into the same full-batch gradient. With dropout off, the only
difference is the order of floating-point additions in the all-reduce (relative error around
1e-7 per step), which over 30 AdamW steps stays far below 1e-3 in the loss.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS, set_args
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
SETTINGS = {**TINY_SETTINGS, "model.dropout": 0.0, "train.max_iters": 30, "train.eval_interval": 10,
            "train.checkpoint_interval": 5, "train.log_interval": 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_args(data, run, batch, resume=False):
    args = ["-m", "banglaslm", "train", "--data", str(data), "--out", str(run),
            *set_args({**SETTINGS, "train.batch_size": batch}), "--set", "train.threads=1"]
    return args + (["--resume"] if resume else [])


def torchrun(*extra):
    return [sys.executable, "-m", "torch.distributed.run", *extra]


def evals(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["split"], r["loss"]) for r in rows if "split" in r]


def weights(run):
    return {k: v for k, v in load_file(str(run / "checkpoints" / "latest.safetensors")).items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def single(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("single") / "run"
    subprocess.run([sys.executable, *train_args(data_dir, run, batch=8)], check=True, env=env(), capture_output=True)
    return run


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("ddp") / "run"
    r = subprocess.run(torchrun("--standalone", "--nproc_per_node=2", *train_args(data_dir, run, batch=4)),
                       env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def test_two_processes_follow_the_single_process_trajectory(single, ddp):
    a, b = evals(single), evals(ddp)
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for (_, _, la), (_, _, lb) in zip(a, b):
        assert abs(la - lb) < 1e-3, (a, b)
    assert a[-1][2] < a[1][2]  # and it trained
    wa, wb = weights(single), weights(ddp)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-3


def test_only_rank_zero_writes(ddp):
    names = sorted(p.name for p in ddp.iterdir())
    assert names == ["checkpoints", "config.json", "data_meta.json", "loss.png", "metrics.jsonl", "tokenizer.json"]
    iters = [json.loads(l)["iter"] for l in (ddp / "metrics.jsonl").read_text().splitlines() if "split" not in l]
    assert iters == sorted(set(iters))  # one writer: no duplicated records


def test_two_nodes_on_loopback(ddp, data_dir, tmp_path):
    run, port = tmp_path / "run", free_port()
    procs = [subprocess.Popen(torchrun("--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
                                       "--master_addr=127.0.0.1", f"--master_port={port}",
                                       *train_args(data_dir, run, batch=4)),
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    # Same world size and data as the single-machine DDP run: the same model.
    wa, wb = weights(ddp), weights(run)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def kill_9(proc):
    """SIGKILL a torchrun job: the workers first, then the launcher. torch.distributed.elastic
    starts each worker in a session of its own, so killing the launcher's process group alone
    would leave both workers training (and writing checkpoints) as orphans."""
    workers = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers):  # gone, or a zombie: no longer writing
        assert time.time() < deadline
        time.sleep(0.01)


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_resume_under_ddp_after_kill_9(ddp, data_dir, tmp_path):
    run = tmp_path / "run"
    cmd = torchrun("--standalone", "--nproc_per_node=2", *train_args(data_dir, run, batch=4))
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = run / "checkpoints" / "latest.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.exists() and json.loads(__import__("safetensors").safe_open(str(ckpt), "pt").metadata()["state"])["iter"] >= 10:
            break
        time.sleep(0.05)
    kill_9(proc)
    r = subprocess.run(torchrun("--standalone", "--nproc_per_node=2", *train_args(data_dir, run, batch=4, resume=True)),
                       env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    wa, wb = weights(ddp), weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit-identical to the uninterrupted DDP run
    assert evals(ddp) == evals(run)


def test_a_resume_with_another_number_of_processes_is_refused(trained_run, data_dir, tmp_path):
    """A 2-process run resumed by one process went on at half the global batch without a word
    (and the reverse at twice it): refused, naming the command that resumes it."""
    import shutil

    from conftest import one_line_error, run_cli

    from banglaslm.checkpoint import load_checkpoint, write_checkpoint
    from banglaslm.errors import UserError
    from banglaslm.runfolder import RunFolder
    from banglaslm.training.distributed import DistEnv
    from banglaslm.training.parallel import Replicated

    with pytest.raises(UserError, match=r"trained by 1 process\(es\) and this resume has 2.*one process"):
        Replicated(DistEnv(rank=0, world_size=2), RunFolder(trained_run)).load()
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    latest = run / "checkpoints" / "latest.safetensors"
    ckpt = load_checkpoint(latest)
    write_checkpoint(latest, ckpt.tensors, {**ckpt.state, "world_size": 2})  # as a 2-process run leaves it
    before = latest.read_bytes()
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--max-iters", 60])
    one_line_error(code, err, "resume it with torchrun --nproc_per_node=2")
    assert latest.read_bytes() == before


def test_a_worker_killed_alone_leaves_the_others_one_line_and_the_run_resumes(ddp, data_dir, tmp_path):
    """kill -9 of rank 1 only: rank 0's next collective fails (gloo: "Connection closed by peer").
    It printed a 40-line traceback; now one line saying what happened and how to go on."""
    run = tmp_path / "run"
    cmd = torchrun("--standalone", "--nproc_per_node=2", *train_args(data_dir, run, batch=4))
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.time() + 120
    while not (run / "checkpoints" / "latest.safetensors").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    rank1 = next(int(pid) for pid in children.read_text().split()
                 if b"\0RANK=1\0" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes())
    os.kill(rank1, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    line = next(line for line in err.splitlines() if line.startswith("banglaslm train (rank 0): error: "))
    assert re.fullmatch(r"banglaslm train \(rank 0\): error: another process of this run stopped \([^()]*Connection "
                        r"(closed|reset) by peer; its own output, or torchrun's, says why\); the same torchrun command "
                        r"plus --resume continues from its last checkpoint \(.*latest.safetensors\)", line), line
    assert "[rank0]: Traceback" not in err
    r = subprocess.run(torchrun("--standalone", "--nproc_per_node=2", *train_args(data_dir, run, batch=4, resume=True)),
                       env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    wa, wb = weights(ddp), weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("when", ["joining", "training"])
def test_workers_die_with_a_killed_launcher(ddp, data_dir, tmp_path, when):
    """torchrun starts its workers in sessions of their own: after a kill -9 of torchrun alone,
    workers still joining the process group held the run's lock for its 30-minute timeout, and
    workers already training went on writing checkpoints unseen. Now they die with it, and the
    run resumes from its last checkpoint to the uninterrupted run's weights."""
    run = tmp_path / "run"
    cmd = torchrun("--standalone", "--nproc_per_node=2", *train_args(data_dir, run, batch=4))
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.time() + 120
    while len(children.read_text().split()) < 2 or (when == "training" and not (run / "checkpoints").is_dir()):
        assert time.time() < deadline
        time.sleep(0.01)
    workers = [int(pid) for pid in children.read_text().split()]
    proc.kill()
    proc.wait()
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers):
        assert time.time() < deadline, "a worker outlived its launcher"
        time.sleep(0.05)
    resumed = torchrun("--standalone", "--nproc_per_node=2",
                       *train_args(data_dir, run, batch=4, resume=(run / "checkpoints" / "latest.safetensors").exists()))
    r = subprocess.run(resumed, env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    wa, wb = weights(ddp), weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_launcher_that_is_pid_1_is_not_taken_for_a_dead_one(data_dir, tmp_path):
    """In a container torchrun is often PID 1, the parent a worker of a dead launcher is handed to
    on a plain machine: taking one for the other killed every worker at its start."""
    import shlex
    import shutil

    if shutil.which("unshare") is None or subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                                                           capture_output=True).returncode != 0:
        pytest.skip("no PID namespace here (unshare missing or not permitted)")
    run = tmp_path / "run"
    inner = shlex.join(torchrun("--standalone", "--nproc_per_node=2", *train_args(data_dir, run, batch=4)))
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", f"exec {inner}"], env=env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert evals(run)[-1][0] == SETTINGS["train.max_iters"]
