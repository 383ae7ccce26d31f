import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS, set_args
from safetensors.torch import load_file

from banglaslm.config import build_config
from banglaslm.errors import UserError
from banglaslm.model import GPT
from banglaslm.training.optim import lr_at, make_optimizer
from banglaslm.training.trainer import train


def test_lr_schedule_warmup_then_cosine_to_ten_percent():
    cfg = build_config(overrides={"learning_rate": 1e-3, "warmup_iters": 10, "max_iters": 110}).train
    lrs = [lr_at(i, cfg) for i in range(111)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1e-3                   # linear warm-up
    assert lrs[10] == pytest.approx(1e-3)                        # peak
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))      # then monotone decay
    assert lrs[60] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))   # cosine midpoint
    assert lrs[110] == pytest.approx(1e-4)                       # ends at 10% of peak


@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_weight_decay_only_on_matrices(arch):
    cfg = build_config(overrides={"arch": arch, "n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 40})
    model = GPT(cfg.model)
    decay, no_decay = make_optimizer(model, cfg.train).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 or p is model.tok_emb.weight for p in no_decay["params"])
    tied_in_decay = any(p is model.tok_emb.weight for p in decay["params"])
    assert tied_in_decay == (arch == "gpt")  # a tied embedding is not decayed


def test_training_writes_metrics_plot_checkpoints_and_learns(trained_run):
    records = [json.loads(l) for l in (trained_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "split" not in r]
    evals = [r for r in records if "split" in r]
    assert {"iter", "loss", "lr", "tokens_per_s"} <= set(steps[0])
    assert set(evals[0]) == {"iter", "split", "loss", "bits_per_char", "elapsed_s"}
    splits = json.loads((trained_run / "data_meta.json").read_text())["splits"]
    for r in evals:  # the loss per token in bits, times the split's tokens per character
        ratio = splits[r["split"]]["tokens"] / splits[r["split"]]["chars"]
        assert r["bits_per_char"] == pytest.approx(r["loss"] / math.log(2) * ratio, rel=1e-9)
    assert steps[0]["skipped_updates"] == 0 and steps[0]["grad_norm"] > 0
    assert [r["iter"] for r in evals if r["split"] == "val"] == [0, 10, 20, 30, 40]
    val = [r["loss"] for r in evals if r["split"] == "val"]
    assert val[-1] < val[0] - 0.5  # it learned something
    assert (trained_run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (trained_run / "checkpoints" / "latest.safetensors").is_file()
    assert (trained_run / "checkpoints" / "best.safetensors").is_file()


def test_existing_run_needs_resume_and_tokenizer_must_match(trained_run, tmp_path, small_books, capsys):
    # The advice names the parameters of the interface in use: Python's here, the CLI's flags below.
    with pytest.raises(UserError, match="already holds a run; add `resume` .* another `run_dir`") as caught:
        train(_data_of(trained_run), trained_run, build_config(overrides=TINY_SETTINGS), progress=False)
    assert "--" not in str(caught.value)
    from banglaslm.cli import main

    assert main(["train", "--data", str(_data_of(trained_run)), "--out", str(trained_run)]) == 2
    assert "already holds a run; add --resume to continue it or choose another --out" in capsys.readouterr().err
    from banglaslm.data.prepare import prepare

    other = tmp_path / "other"
    prepare([str(p) for p in small_books], other, tokenizer="char", doc_split="paragraph", progress=False)
    with pytest.raises(UserError, match="different tokenizer"):
        train(other, trained_run, resume=True, progress=False)
    with pytest.raises(UserError, match="these differ: model.n_layer"):
        train(_data_of(trained_run), trained_run, build_config(overrides={**TINY_SETTINGS, "n_layer": 3}),
              resume=True, progress=False)


def test_a_damaged_latest_checkpoint_on_resume_names_the_way_back(trained_run, data_dir, tmp_path):
    """A resume reads `latest` only: when it cannot be read (a copy cut short, a flipped bit),
    the advice is to resume from `best`, which works, or to train again once both are damaged."""
    import shutil

    from conftest import one_line_error, run_cli

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    latest, best = run / "checkpoints" / "latest.safetensors", run / "checkpoints" / "best.safetensors"
    good = latest.read_bytes()
    flipped = bytearray(good)
    flipped[-100] ^= 1  # in the tensors, after the header: only the checksums see it
    resume = ["train", "--data", data_dir, "--out", run, "--resume", "--max-iters", "45"]
    for damaged in (good[:1000], bytes(flipped)):
        latest.write_bytes(damaged)
        one_line_error(*run_cli(resume), f"to resume from the best checkpoint instead, copy {best} over {latest}")
        assert latest.read_bytes() == damaged  # nothing written
    # A lost latest: a new run there would have replaced the best weights, a resume said to start anew.
    latest.unlink()
    kept = best.read_bytes()
    one_line_error(*run_cli(resume), f"{latest} is missing; to resume from the best checkpoint instead, copy {best} over")
    one_line_error(*run_cli(resume[:-3]), "already holds a run")
    assert best.read_bytes() == kept and not latest.exists()
    shutil.copy(best, latest)
    code, err = run_cli(resume)
    assert code == 0, err
    latest.write_bytes(good[:1000])
    best.write_bytes(good[:1000])
    one_line_error(*run_cli(resume), "train again (its best checkpoint cannot be read either)")


def test_a_full_disk_while_saving_the_best_leaves_best_and_its_record_agreeing(data_dir, tmp_path, monkeypatch):
    """The save wrote `latest`, recording the new best_val, then copied it to `best`: a full disk
    there left the old `best` under the new record, and the resume, finding the run finished,
    never wrote it (eval, generate and export then used old weights). The copy's error also
    named `latest`, which was written well."""
    import errno

    from banglaslm import checkpoint as checkpoint_module
    from banglaslm import fileio
    from banglaslm.checkpoint import read_state
    from banglaslm.training.trainer import Trainer

    run = tmp_path / "run"
    best, latest = run / "checkpoints" / "best.safetensors", run / "checkpoints" / "latest.safetensors"
    settings = build_config(overrides={**TINY_SETTINGS, "train.max_iters": 20})
    real_write, real_copy, real_evaluate = checkpoint_module.write_safetensors, fileio.shutil.copyfile, Trainer.evaluate
    evaluations = []

    def evaluate(self):  # the evaluation at step 20 (the third) improves on the others
        result = real_evaluate(self)
        evaluations.append(result)
        return {**result, "val": self.state.best_val - 1.0} if len(evaluations) == 3 else result

    def disk_full_for_the_last_best(real, target_arg):
        def call(*args, **kwargs):
            if Path(args[target_arg]).name == best.name and len(evaluations) == 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(args[0]), None, str(args[1]))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    monkeypatch.setattr(checkpoint_module, "write_safetensors", disk_full_for_the_last_best(real_write, 0))
    monkeypatch.setattr(fileio.shutil, "copyfile", disk_full_for_the_last_best(real_copy, 1))
    with pytest.raises(OSError) as caught:
        train(data_dir, run, settings, progress=False)
    assert caught.value.filename == str(best)
    recorded, held = read_state(latest), read_state(best)
    assert recorded["best_val"] == held["best_val"] and recorded["iter"] < 20, (recorded, held["iter"])
    monkeypatch.undo()
    train(data_dir, run, settings, resume=True, progress=False)
    assert read_state(latest)["iter"] == 20 and read_state(best)["best_val"] == read_state(latest)["best_val"]


def test_a_resume_that_moves_the_learning_rate_says_so(trained_run, data_dir, tmp_path):
    """A resume with a larger max_iters stretched the schedule, so the rate jumped from its decayed
    value back up (0.00046 to 0.002 in a trial) without a word."""
    import shutil

    from conftest import run_cli

    from banglaslm.runfolder import RunFolder
    from banglaslm.training.optim import lr_at

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    old = RunFolder(run).load_config().train
    new = RunFolder(run).load_config().train
    new.max_iters = 80
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--max-iters", "80"])
    assert code == 0, err
    assert (f"note: the learning-rate schedule changed with train.max_iters 40 → 80: at iteration 40 the rate goes "
            f"from {lr_at(40, old):.3g} to {lr_at(40, new):.3g}") in err
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--max-iters", "81"])
    assert code == 0 and "schedule changed" not in err  # one step more moves the rate by less than 1% of its peak
    # a time-limited schedule follows the share of the time used: a limit set (or raised) on resume moves it too
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--max-iters", "82",
                         "--set", "train.time_limit_min=10"])
    assert code == 0, err
    note = re.search(r"schedule changed with train.max_iters 81 → 82, train.time_limit_min 0.0 → 10(\.0)?: at iteration 81 the rate goes "
                     r"from (\S+) to (\S+), ", err)
    assert note, err
    assert float(note[2]) == pytest.approx(lr_at(81, new), rel=1e-2) and float(note[3]) > 0.9 * new.learning_rate


def _data_of(run):
    from banglaslm.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoints" / "latest.safetensors").state["data"]["path"]


# ---- exact resume -------------------------------------------------------------------------

RESUME_SETTINGS = {**TINY_SETTINGS, "train.max_iters": 60, "train.eval_interval": 10,
                   "train.checkpoint_interval": 3, "train.grad_accum_steps": 2}


def _train_cmd(data, run, resume=False):
    cmd = [sys.executable, "-m", "banglaslm", "train", "--data", str(data), "--out", str(run), *set_args(RESUME_SETTINGS)]
    return cmd + (["--resume"] if resume else [])


def _weights(run):
    return load_file(str(run / "checkpoints" / "latest.safetensors"))


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(_train_cmd(data_dir, run), check=True, env=_env(), capture_output=True)
    return run


def _assert_same_final_state(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        if key.startswith(("model.", "optim.")):
            assert torch.equal(wa[key], wb[key]), key
    ma = [l for l in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [l for l in (b / "metrics.jsonl").read_text().splitlines()]
    timing = {"tokens_per_s", "elapsed_s"}  # wall-clock figures differ between any two runs
    strip = lambda lines: [{k: v for k, v in json.loads(l).items() if k not in timing} for l in lines]
    assert strip(ma) == strip(mb)


@pytest.mark.slow
def test_without_a_progress_bar_each_evaluation_prints_a_line(data_dir, tmp_path, capsys):
    """Output to a file or pipe (no terminal, progress left to the default): one line per
    evaluation on stdout, with the losses metrics.jsonl records; progress=False: silent."""
    cfg = build_config(overrides={**TINY_SETTINGS, "train.max_iters": 20})
    train(data_dir, tmp_path / "run", cfg)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("iter ")]
    assert [line.split(":")[0] for line in lines] == ["iter 0/20", "iter 10/20", "iter 20/20"]
    records = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last_val = [r["loss"] for r in records if r.get("split") == "val" and r["iter"] == 20][0]
    assert f"val {last_val:.4f}" in lines[-1]
    train(data_dir, tmp_path / "quiet", cfg, progress=False)
    assert "iter " not in capsys.readouterr().out


def test_kill_9_at_random_moments_then_resume_is_bit_identical(reference_run, data_dir, tmp_path):
    run = tmp_path / "run"
    # Let the first process get going, then kill it hard at several moments (mid-step or
    # mid-save), resuming each time; finally let it finish.
    first = True
    for delay in (0.9, 0.45, 0.7, 0.2):
        proc = subprocess.Popen(_train_cmd(data_dir, run, resume=not first), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (run / "checkpoints" / "latest.safetensors").exists() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
        first = False
    subprocess.run(_train_cmd(data_dir, run, resume=True), check=True, env=_env(), capture_output=True)
    _assert_same_final_state(reference_run, run)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_is_bit_identical(reference_run, data_dir, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(data_dir, run), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 8:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at iteration" in err and "--resume" in err and "Traceback" not in err
    from banglaslm.checkpoint import load_checkpoint

    stopped_at = load_checkpoint(run / "checkpoints" / "latest.safetensors").state["iter"]
    assert 0 < stopped_at < 60
    subprocess.run(_train_cmd(data_dir, run, resume=True), check=True, env=_env(), capture_output=True)
    _assert_same_final_state(reference_run, run)


def test_time_limit_stops_the_run_and_drives_the_schedule(data_dir, tmp_path):
    """train.time_limit_min: the run ends when the time is up (with a final evaluation and
    checkpoint), long before max_iters, and the LR has decayed on the clock to near its floor."""
    limit_s = 6.0
    cfg = build_config(overrides={**TINY_SETTINGS, "train.max_iters": 10**9, "train.time_limit_min": limit_s / 60,
                                  "train.log_interval": 1, "train.eval_interval": 10**6, "train.warmup_iters": 1})
    result = train(data_dir, tmp_path / "run", cfg, progress=False)
    assert 3 <= result.iterations < 10**9
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "lr" in r]
    evals = [r for r in rows if "split" in r]
    # One evaluation at the start and one where the time ran out (eval_interval is huge).
    assert [e["iter"] for e in evals] == [0, 0, result.iterations, result.iterations]
    assert limit_s <= evals[-1]["elapsed_s"] < limit_s + 30
    peak, floor = cfg.train.learning_rate, cfg.train.learning_rate * cfg.train.min_lr_ratio
    lrs = [r["lr"] for r in steps if r["iter"] >= cfg.train.warmup_iters]
    assert lrs == sorted(lrs, reverse=True)  # cosine on the clock only goes down
    assert lrs[0] > floor + 0.75 * (peak - floor) and lrs[-1] < floor + 0.25 * (peak - floor)
    state = json.loads(__import__("safetensors").safe_open(
        str(tmp_path / "run" / "checkpoints" / "latest.safetensors"), "pt").metadata()["state"])
    assert state["iter"] == result.iterations and state["elapsed_s"] >= limit_s
    # A run past its warm-up without a limit, resumed with one: the decay goes on from where the
    # share of the time says, not from the peak (where warm-up ended was never recorded).
    base = {**TINY_SETTINGS, "train.max_iters": 20, "train.log_interval": 1, "train.warmup_iters": 2,
            "train.lr_schedule": "cosine"}
    train(data_dir, tmp_path / "later", build_config(overrides=base), progress=False)
    timed = build_config(overrides={**base, "train.max_iters": 10**6, "train.time_limit_min": 0.04})
    train(data_dir, tmp_path / "later", timed, resume=True, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "later" / "metrics.jsonl").read_text().splitlines()]
    after = [r["lr"] for r in rows if "lr" in r and r["iter"] >= 20]
    assert after and max(after) < 0.99 * peak, after[:3]


def test_lr_schedule_on_the_clock():
    cfg = build_config(overrides={"train.warmup_iters": 10, "train.learning_rate": 1e-3, "train.min_lr_ratio": 0.1})
    tc = cfg.train
    assert lr_at(5, tc, progress=0.9) == lr_at(5, tc)  # warm-up counts steps either way
    assert lr_at(50, tc, progress=0.0) == pytest.approx(1e-3)
    assert lr_at(50, tc, progress=0.5) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(50, tc, progress=1.0) == lr_at(50, tc, progress=3.0) == pytest.approx(1e-4)


def test_a_time_limited_decay_starts_at_the_peak_when_warm_up_ends():
    """The decay's progress was the share of the whole limit, warm-up included: a cosine run
    whose warm-up took 41% of its time dropped from the peak by a quarter in one step."""
    from banglaslm.training.optim import Clock

    tc = build_config(overrides={"train.warmup_iters": 10, "train.learning_rate": 1e-3, "train.min_lr_ratio": 0.1,
                                 "train.lr_schedule": "cosine", "train.time_limit_min": 1}).train
    clock = Clock(tc.time_limit_min, 0.0)
    rates = []
    for it, used in ((9, 0.40), (10, 0.41), (11, 0.42), (50, 0.705), (90, 1.0)):
        clock.used = used
        rates.append(lr_at(it, tc, clock.schedule_progress(it, tc.warmup_iters)))
    assert rates[1] == pytest.approx(1e-3) and rates[0] < rates[1]  # warm-up ends at the peak
    assert rates[2] == pytest.approx(1e-3, rel=1e-3)  # no drop, then a smooth decay
    assert rates[3] == pytest.approx(1e-4 + 0.5 * 9e-4) and rates[4] == pytest.approx(1e-4)  # halfway, the floor
    assert clock.warmup_end_s == pytest.approx(0.41 * 60)
    resumed = Clock(tc.time_limit_min, 42.3, clock.warmup_end_s)  # a resume keeps where warm-up ended
    resumed.used = 0.705
    assert resumed.schedule_progress(50, tc.warmup_iters) == pytest.approx(0.5)


def test_a_colab_fp16_run_goes_on_on_a_cpu(trained_run, data_dir, tmp_path):
    """The course trains in fp16 on a T4; on a CPU each refusal's advice led to the next (cuda →
    use cpu; fp16 → use fp32; fp32 → "resume uses the saved config"). The precision may now change
    on resume, and fp16's loss scale is dropped with a note."""
    import shutil

    from conftest import run_cli

    from banglaslm.checkpoint import load_checkpoint, write_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    config["train"].update(precision="fp16", device="cuda")  # what the T4 run saved
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for path in (run / "checkpoints").glob("*.safetensors"):
        ckpt = load_checkpoint(path)
        ckpt.state["config"]["train"].update(precision="fp16", device="cuda")
        ckpt.state["scaler"] = {"scale": 8192.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                                "_growth_tracker": 17}
        write_checkpoint(path, ckpt.tensors, ckpt.state)
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--max-iters", "44",
                         "--set", "train.device=cpu"])
    assert code == 2 and "train.precision=fp16 needs a CUDA GPU; use bf16 or fp32" in err, err
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--max-iters", "44",
                         "--set", "train.device=cpu", "--set", "train.precision=fp32"])
    assert code == 0, err
    assert "note: this run trained in fp16 and goes on in fp32" in err, err
    state = load_checkpoint(run / "checkpoints" / "latest.safetensors").state
    assert state["iter"] == 44 and state["config"]["train"]["precision"] == "fp32" and not state.get("scaler")


def test_training_says_what_it_trains_and_warns_of_emulated_bf16(data_dir, tmp_path):
    """The course's student had to run `report` to learn the model's size; and bf16 on a CPU
    without it natively ran at about half fp32's speed in a trial here, without a word."""
    from conftest import cli_here

    from banglaslm.runfolder import RunFolder
    from banglaslm.training.memory import parameter_count
    from banglaslm.training.optim import cpu_has_native_bf16

    run = tmp_path / "run"
    r = cli_here("train", "--data", data_dir, "--out", run, *set_args(TINY_SETTINGS), "--set", "train.max_iters=2",
                 "--set", "train.warmup_iters=1", "--set", "train.precision=bf16")
    assert r.returncode == 0, r.stderr
    config = RunFolder(run).load_config()
    n = parameter_count(config)
    assert r.stdout.splitlines()[0] == (f"model: {n / 1e6:.2f}M parameters (2 layers x 32 wide, block 32, vocab "
                                        f"{config.model.vocab_size:,}) on cpu in bf16"), r.stdout
    assert ("this CPU has no native bf16" in r.stderr) is not cpu_has_native_bf16(), r.stderr
