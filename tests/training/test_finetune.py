"""`finetune`: a run folder like any other, from a run's or a Hugging Face folder's weights;
exact resume after kill -9 (full and LoRA); LoRA adapters merged into what later stages read;
every bad input one line, exit 2, nothing written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli, set_args, stop_training_at
from safetensors.torch import load_file

from banglaslm.checkpoint import load_checkpoint
from banglaslm.cli import main
from banglaslm.config import RunConfig
from banglaslm.errors import UserError
from banglaslm.model import GPT
from banglaslm.runfolder import RunFolder, load_model
from banglaslm.training.finetune import _set_length, finetune, finetune_config
from banglaslm.training.lora import Lora

DAYS = ["রবিবার", "সোমবার", "মঙ্গলবার", "বুধবার", "বৃহস্পতিবার", "শুক্রবার", "শনিবার"]
FAST = {"train.max_iters": 12, "train.eval_interval": 4, "train.checkpoint_interval": 3, "train.log_interval": 1,
        "train.warmup_iters": 2, "train.eval_iters": 2}


def conversations(count: int = 60) -> list[dict]:
    rows = []
    for i in range(count):
        day, after = DAYS[i % 7], DAYS[(i + 1) % 7]
        rows.append({"messages": [{"role": "user", "content": f"{day}ের পরের দিন কী বার? ({i})"},
                                  {"role": "assistant", "content": f"{day}ের পরের দিন {after}।"}]})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("chats") / "days.jsonl", conversations())


def config_for(run, **overrides) -> RunConfig:
    return finetune_config(RunFolder(run).load_config(), overrides={**FAST, **overrides})


def test_a_finetuned_run_is_a_run_folder_that_learned_its_answers(trained_run, chats, tmp_path):
    out = tmp_path / "ft"
    result = finetune(trained_run, [str(chats)], out, config_for(trained_run, **{"train.max_iters": 40}),
                      progress=False, say=lambda line: None)
    assert result.iterations == 40
    history = load_checkpoint(out / "checkpoints" / "latest.safetensors").state["history"]
    assert history[-1]["val"] < history[0]["val"] - 0.5  # the held-out answers got much likelier
    state = load_checkpoint(out / "checkpoints" / "latest.safetensors").state
    assert state["init_from"]["path"] == str(trained_run.resolve())
    assert state["data"]["splits"]["train"]["documents"] == 54 and state["data"]["splits"]["val"]["documents"] == 6
    meta = json.loads((out / "data_meta.json").read_text())
    assert meta["format"] == "banglaslm-conversations" and meta["chat_template"] == "bn-chat-2"
    loaded = load_model(out)  # what generate, chat, serve, eval and the exports read
    assert loaded.config.model == load_model(trained_run).config.model
    assert (out / "loss.png").is_file() and (out / "metrics.jsonl").is_file()


def test_epochs_set_the_length(trained_run, chats, tmp_path):
    config = finetune_config(RunFolder(trained_run).load_config(), overrides={"finetune.epochs": 2})
    result = finetune(trained_run, [str(chats)], tmp_path / "ft", config, progress=False, say=lambda line: None)
    rows = len(json.loads((tmp_path / "ft" / "data_meta.json").read_text())["splits"]["train"]) and \
        json.loads((tmp_path / "ft" / "data_meta.json").read_text())["splits"]["train"]["blocks"]
    batch = config.train.batch_size
    assert result.iterations == -(-2 * rows // batch)
    # giving train.max_iters turns epochs off
    assert finetune_config(RunFolder(trained_run).load_config(), overrides={"max_iters": 7}).finetune.epochs == 0


def test_a_batch_larger_than_the_data_is_warned(trained_run, chats, tmp_path, capsys):
    """batch_size 1000 on a few packed blocks ran minutes without finishing a step, silently."""
    config = finetune_config(RunFolder(trained_run).load_config(), overrides={"max_iters": 1, "batch_size": 64})
    finetune(trained_run, [str(chats)], tmp_path / "ft", config, progress=False, say=lambda line: None)
    rows = json.loads((tmp_path / "ft" / "data_meta.json").read_text())["splits"]["train"]["blocks"]
    assert rows < 64
    assert (f"warning: a step takes 64 rows (train.batch_size x grad_accum_steps x processes), but the training "
            f"conversations pack into {rows:,} blocks") in capsys.readouterr().err
    finetune(trained_run, [str(chats)], tmp_path / "ft2", finetune_config(
        RunFolder(trained_run).load_config(), overrides={"max_iters": 1, "batch_size": rows}),
        progress=False, say=lambda line: None)
    assert "warning: a step takes" not in capsys.readouterr().err


def test_a_runs_own_config_json_is_a_usable_config_file(trained_run, tmp_path):
    """Every run's config.json holds finetune.lora_rank 0 (full fine-tuning): given with --config
    it was refused as a LoRA rank below 1, which only a rank set on its own is."""
    source = RunFolder(trained_run).load_config()
    config = finetune_config(source, file=trained_run / "config.json")
    assert config.finetune.lora_rank == 0
    tuned = tmp_path / "config.json"
    tuned.write_text(json.dumps({**config.to_dict(), "finetune": {**config.to_dict()["finetune"], "lora_rank": 4}}))
    assert finetune_config(source, file=tuned).finetune.lora_rank == 4
    with pytest.raises(UserError, match="lora_rank must be >= 1 for LoRA, got 0"):
        finetune_config(source, file=tuned, overrides={"finetune.lora_rank": 0})
    # its LoRA keys (rank 0) did not excuse a LoRA setting given without a rank: it ran full fine-tuning
    with pytest.raises(UserError, match="finetune.lora_alpha is a LoRA setting, but no finetune.lora_rank is set"):
        finetune_config(source, file=trained_run / "config.json", overrides={"finetune.lora_alpha": 32})
    # its train.max_iters (always written) no longer turns its finetune.epochs off
    assert config.finetune.epochs == source.finetune.epochs > 0


def test_epochs_fit_the_warm_up_and_evaluations_left_at_their_defaults_and_say_so(trained_run):
    """A warm-up or evaluation interval the user gave was lowered silently to fit the epochs'
    length (--set train.eval_interval=10 evaluated every 4 steps): given ones are kept, and the
    fitted ones are named."""
    source = RunFolder(trained_run).load_config()
    config = finetune_config(source, overrides={"finetune.epochs": 1})
    fitted = _set_length(config, rows=100)
    assert config.train.max_iters == -(-100 // config.train.batch_size)
    assert config.train.warmup_iters == config.train.max_iters // 5 and "warm-up" in fitted
    assert config.train.eval_interval == max(1, config.train.max_iters // 4) and "train.eval_interval" in fitted
    given = finetune_config(source, overrides={"finetune.epochs": 1, "train.warmup_iters": 3, "train.eval_interval": 40})
    assert _set_length(given, rows=100) == "" and (given.train.warmup_iters, given.train.eval_interval) == (3, 40)


def test_lora_trains_adapters_and_checkpoints_hold_the_merged_model(trained_run, chats, tmp_path):
    out = tmp_path / "lora"
    config = config_for(trained_run, **{"finetune.lora_rank": 4, "finetune.lora_targets": "qkv,down",
                                        "train.learning_rate": 1e-2})
    finetune(trained_run, [str(chats)], out, config, progress=False, say=lambda line: None)
    source = load_checkpoint(trained_run / "checkpoints" / "best.safetensors").model_state()
    ckpt = load_checkpoint(out / "checkpoints" / "latest.safetensors")
    merged = ckpt.model_state()
    assert merged.keys() == source.keys()
    changed = {k for k in merged if not torch.equal(merged[k], source[k])}
    assert changed and all(k.endswith(("attn.qkv.weight", "mlp.down.weight")) for k in changed), changed
    adapter = {k: v for k, v in ckpt.tensors.items() if k.startswith("adapter.")}
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    # the merged weights compute what the source with its adapter attached computes
    cfg = load_model(out).config
    attached = GPT(cfg.model)
    attached.load_state_dict(source, strict=False)
    lora = Lora(attached, cfg.finetune)
    lora.load(ckpt.tensors, ckpt.path)
    x = torch.randint(0, cfg.model.vocab_size, (2, 16))
    assert torch.allclose(load_model(out, "latest").model(x)[0], attached.eval()(x)[0], atol=1e-5)
    # peft's own adapter folder, from the best checkpoint
    files = {p.name for p in (out / "adapter").iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors"}
    peft_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert peft_config["r"] == 4 and sorted(peft_config["target_modules"]) == ["down", "qkv"]
    best = load_checkpoint(out / "checkpoints" / "best.safetensors").tensors
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert saved and all(torch.equal(v, best["adapter." + k.removeprefix("base_model.model.")]) for k, v in saved.items())
    # and peft reads it back onto banglaslm's model (the keys had no "base_model.model.": peft
    # warned of missing keys and the model computed as its source)
    from peft import PeftModel

    plain = GPT(cfg.model)
    plain.load_state_dict(source, strict=False)
    with torch.no_grad():
        on_peft = PeftModel.from_pretrained(plain, str(out / "adapter")).eval()(x)[0]
    assert torch.allclose(on_peft, load_model(out).model(x)[0], atol=1e-5)


# ---- exact resume after kill -9 --------------------------------------------------------------
RESUME = {**FAST, "train.max_iters": 30}


def _cmd(source, data, run, extra=(), resume=False):
    cmd = [sys.executable, "-m", "banglaslm", "finetune", str(source), "--data", str(data), "--out", str(run),
           *set_args(RESUME), *extra]
    return cmd + (["--resume"] if resume else [])


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--set", "finetune.lora_rank=2")], ids=["full", "lora"])
def test_kill_9_then_resume_is_bit_identical(trained_run, chats, tmp_path, extra):
    reference, run = tmp_path / "reference", tmp_path / "run"
    subprocess.run(_cmd(trained_run, chats, reference, extra), check=True, env=_env(), capture_output=True)
    proc = subprocess.Popen(_cmd(trained_run, chats, run, extra), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").is_file() or \
            len((run / "metrics.jsonl").read_text().splitlines()) < 8:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    stopped = load_checkpoint(run / "checkpoints" / "latest.safetensors").state["iter"]
    assert 0 < stopped < 30
    subprocess.run(_cmd(trained_run, chats, run, extra, resume=True), check=True, env=_env(), capture_output=True)
    a, b = (load_file(str(r / "checkpoints" / "latest.safetensors")) for r in (reference, run))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "optim.", "adapter."))), stopped


def test_resume_with_other_conversations_is_refused(trained_run, chats, tmp_path):
    run = tmp_path / "ft"
    finetune(trained_run, [str(chats)], run, config_for(trained_run), progress=False, say=lambda line: None)
    other = write_jsonl(tmp_path / "other.jsonl", conversations(50))
    code, err = run_cli(["finetune", trained_run, "--data", other, "--out", run, "--resume"])
    assert code == 2 and "is not the data the run" in err and "banglaslm finetune" in err and "NEW_RUN" in err, err
    assert len(err.splitlines()) == 1


def test_resume_without_data_continues_on_the_runs_own(trained_run, chats, tmp_path, monkeypatch):
    """`finetune SOURCE --out RUN --resume` without --data read the embedded instruction set, then
    refused it as not the run's data, listing its files."""
    import shutil

    run = tmp_path / "ft"
    (tmp_path / "here").mkdir()
    shutil.copy(chats, tmp_path / "here" / "mine.jsonl")
    monkeypatch.chdir(tmp_path / "here")  # given relative to this folder, resumed from another
    finetune(trained_run, ["mine.jsonl"], run, config_for(trained_run, **{"train.max_iters": 2}), progress=False,
             say=lambda line: None)
    monkeypatch.chdir(tmp_path)
    said = []
    result = finetune(trained_run, None, run, resume=True, max_iters=4, progress=False, say=said.append)
    assert result.iterations == 4 and not any("embedded" in line for line in said), said
    (tmp_path / "here" / "mine.jsonl").unlink()  # the recorded input gone: named, with the fix
    with pytest.raises(UserError, match=r"the run recorded its data as .*mine.jsonl .*data_meta.json.*--data"):
        finetune(trained_run, None, run, resume=True, max_iters=6, progress=False, say=lambda line: None)


def test_a_resume_on_the_embedded_set_survives_a_reinstall(trained_run, tmp_path):
    """A fine-tune on the embedded set recorded the installed package's paths; after a reinstall
    elsewhere its --resume said "recorded its data as ... which is not there now; give --data"."""
    import json

    run = tmp_path / "ft"
    finetune(trained_run, None, run, config_for(trained_run, **{"train.max_iters": 2}), progress=False,
             say=lambda line: None)
    meta = json.loads((run / "data_meta.json").read_text(encoding="utf-8"))
    meta["sources"] = [f"/old/venv/lib/python3.11/site-packages/banglaslm/data/instructions/{Path(p).name}"
                       for p in meta["sources"]]
    (run / "data_meta.json").write_text(json.dumps(meta), encoding="utf-8")
    result = finetune(trained_run, None, run, resume=True, max_iters=4, progress=False, say=lambda line: None)
    assert result.iterations == 4


def test_a_folder_holding_the_other_kind_of_run_is_named_not_offered_to_resume(trained_run, chats, data_dir, tmp_path):
    """finetune into a pretraining run's folder (and train into a fine-tune's) said "add --resume
    to continue it", and --resume then failed on something else."""
    import shutil

    pretraining = tmp_path / "pre"
    shutil.copytree(trained_run, pretraining)
    fine_tuned = tmp_path / "ft"
    finetune(trained_run, [str(chats)], fine_tuned, config_for(trained_run), progress=False, say=lambda line: None)
    before = {run: {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} for run in (pretraining, fine_tuned)}
    for resume in ([], ["--resume"]):
        code, err = run_cli(["finetune", trained_run, "--data", chats, "--out", pretraining, "--max-iters", "500", *resume])
        assert code == 2 and "holds a pretraining run (banglaslm train)" in err and "--out NEW_RUN" in err, err
        code, err = run_cli(["train", "--data", data_dir, "--out", fine_tuned, "--max-iters", "500", *resume])
        assert code == 2 and "holds a fine-tuning run (banglaslm finetune)" in err, err
        assert f"--init-from {fine_tuned}" in err and "add --resume" not in err and len(err.splitlines()) == 1, err
    assert before == {run: {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} for run in (pretraining, fine_tuned)}


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------
@pytest.mark.parametrize("rows, extra, problem", [
    ([{"messages": []}], (), "has no messages"),
    ([{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}], (), "unknown role"),
    ([{"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]}], (), "only text content parts"),
    ([{"messages": [{"role": "user", "content": "x"}]}], (), "no assistant turn"),
    ([], (), "holds no conversations"),
    (None, ("--set", "finetune.lora_rank=0"), "finetune.lora_rank must be >= 1 for LoRA, got 0"),
    (None, ("--set", "finetune.lora_rank=-2"), "must be >= 1 for LoRA"),
    (None, ("--set", "finetune.lora_rank=4", "--set", "finetune.lora_targets=qkv,c_attn"), "c_attn"),
    (None, ("--set", "finetune.lora_targets=qkv"), "no finetune.lora_rank is set"),
    (None, ("--set", "finetune.block_size=4096"), "finetune.block_size"),
    (None, ("--set", "finetune.block_size=1"), "finetune.block_size: must be 0 (the model's context) or in [16, "),
    (None, ("--set", "model.n_layer=7"), "model.n_layer=7 (the source has 2)"),
    (None, ("--set", "model.tie_embeddings=false"), "model.tie_embeddings=False (the source has True)"),
    (None, ("--set", "finetune.loss_on=everything"), "expected one of assistant, all"),
], ids=["no-messages", "role", "content", "no-assistant", "empty-file", "rank-0", "rank-negative", "target", "lora-without-rank",
        "block", "block-1", "shape", "untie", "loss-on"])
def test_bad_input_is_one_line_and_writes_nothing(trained_run, chats, tmp_path, rows, extra, problem):
    data = chats if rows is None else write_jsonl(tmp_path / "bad.jsonl", conversations(3) + rows)
    if rows == []:
        data = write_jsonl(tmp_path / "empty.jsonl", [])
    out = tmp_path / "out"
    code, err = run_cli(["finetune", trained_run, "--data", data, "--out", out, *set_args(FAST), *extra])
    assert code == 2 and problem in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_a_source_that_is_not_a_model_is_refused(tmp_path, chats):
    code, err = run_cli(["finetune", tmp_path / "nothing", "--data", chats, "--out", tmp_path / "o"])
    assert code == 2 and "run folder not found" in err
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text("{}")
    code, err = run_cli(["finetune", tmp_path / "odd", "--data", chats, "--out", tmp_path / "o"])
    assert code == 2 and "neither a banglaslm run folder nor a Hugging Face model folder" in err


# ---- Hugging Face folders as sources ------------------------------------------------------------
def test_finetune_and_continued_pretraining_from_a_hugging_face_folder(trained_run, chats, data_dir, tmp_path):
    hf = tmp_path / "hf"
    assert main(["export", str(trained_run), "--format", "hf", "--out", str(hf)]) == 0
    out = tmp_path / "ft"
    code, err = run_cli(["finetune", hf, "--data", chats, "--out", out, *set_args(FAST)])
    assert code == 0, err
    state = load_checkpoint(out / "checkpoints" / "latest.safetensors").state
    assert state["init_from"]["path"] == str(hf.resolve()) and state["init_from"]["imported"]
    source = load_checkpoint(trained_run / "checkpoints" / "best.safetensors")
    assert state["init_from"]["weights"] == source.fingerprint()  # the same weights, through the export
    # continued pretraining: data prepared with the run's tokenizer, or the HF folder's, fits
    from banglaslm.data.folder import DataFolder

    cont = tmp_path / "cont"
    code, err = run_cli(["train", "--data", data_dir, "--out", cont, "--init-from", hf, *set_args(FAST)])
    assert code == 0, err
    assert load_checkpoint(cont / "checkpoints" / "latest.safetensors").state["init_from"]["imported"]
    books = tmp_path / "books"
    code, err = run_cli(["prepare", *sorted(DataFolder(data_dir).meta["sources"]), "--out", books, "--tokenizer", hf,
                         "--doc-split", "paragraph"])
    assert code == 0, err
    assert DataFolder(books).tokenizer_sha256 == DataFolder(data_dir).tokenizer_sha256


def test_init_from_a_run_with_another_vocabulary_is_refused(trained_run, small_books, tmp_path):
    from banglaslm.data.prepare import prepare

    char = tmp_path / "char"
    prepare([str(small_books[0])], char, tokenizer="char", doc_split="paragraph", progress=False)
    code, err = run_cli(["train", "--data", char, "--out", tmp_path / "r", "--init-from", trained_run])
    assert code == 2 and "vocabulary differs" in err and f"prepare --tokenizer {trained_run}" in err
    assert not (tmp_path / "r").exists()


def test_library_errors_name_the_setting(trained_run, chats, tmp_path):
    with pytest.raises(UserError) as err:
        finetune(trained_run, [str(chats)], tmp_path / "x", config_for(trained_run, **{"finetune.lora_rank": 2,
                                                                                        "finetune.lora_targets": "nope"}),
                 progress=False, say=lambda line: None)
    assert err.value.param == "finetune.lora_targets"


def test_resume_with_another_source(trained_run, chats, tmp_path):
    """A resumed fine-tune keeps the record of the source it started from. A full fine-tune
    resumes from its own weights, so another SOURCE (the base trained on, say; here the fine-tune
    itself) changes nothing and the record stays; a LoRA run's frozen weights must be the
    source's, so another is refused and the run left as it was."""
    out, lora = tmp_path / "ft", tmp_path / "lora"
    finetune(trained_run, [str(chats)], out, config_for(trained_run, **{"train.max_iters": 2}),
             progress=False, say=lambda line: None)
    finetune(out, [str(chats)], out, resume=True, max_iters=4, progress=False, say=lambda line: None)
    state = load_checkpoint(out / "checkpoints" / "latest.safetensors").state
    assert state["iter"] == 4 and state["init_from"]["path"] == str(trained_run.resolve())
    finetune(trained_run, [str(chats)], lora, config_for(trained_run, **{"train.max_iters": 2, "finetune.lora_rank": 2}),
             progress=False, say=lambda line: None)
    before = (lora / "checkpoints" / "latest.safetensors").read_bytes()
    with pytest.raises(UserError, match=f"does not hold the weights this LoRA run started from .{trained_run.resolve()}"):
        finetune(out, [str(chats)], lora, resume=True, max_iters=4, progress=False, say=lambda line: None)
    assert (lora / "checkpoints" / "latest.safetensors").read_bytes() == before


def test_a_lora_run_stopped_by_ctrl_c_leaves_its_adapter(trained_run, chats, tmp_path, monkeypatch):
    """The adapter folder was written only when a run finished: a run stopped with Ctrl-C (to be
    resumed, or not) had checkpoints but no adapter/ to take elsewhere."""
    from banglaslm.training.trainer import TrainingInterrupted

    stop_training_at(monkeypatch, 7)
    out = tmp_path / "lora"
    config = config_for(trained_run, **{"finetune.lora_rank": 2, "train.max_iters": 20, "train.eval_interval": 5})
    with pytest.raises(TrainingInterrupted):
        finetune(trained_run, [str(chats)], out, config, progress=False, say=lambda line: None)
    best = load_checkpoint(out / "checkpoints" / "best.safetensors")
    written = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert written and all(torch.equal(v, best.tensors["adapter." + k.removeprefix("base_model.model.")])
                           for k, v in written.items())


def test_a_fine_tuned_source_passes_on_its_model_not_its_fine_tuning_settings(trained_run):
    """Fine-tuning a LoRA run again did LoRA again, unasked (and rank 0 was refused, so a full
    fine-tune could not be had), and took the source's epochs=0 from its --max-iters."""
    from banglaslm.config import FinetuneConfig

    source = finetune_config(RunFolder(trained_run).load_config(),
                             overrides={"finetune.lora_rank": 2, "finetune.lora_targets": "up,down", "max_iters": 15})
    assert source.finetune.lora_rank == 2 and source.finetune.epochs == 0
    again = finetune_config(source)
    assert again.finetune == FinetuneConfig() and again.finetune.epochs > 0  # full fine-tuning, by epochs
    assert finetune_config(source, overrides={"finetune.lora_rank": 4}).finetune.lora_targets == "all-linear"
    with pytest.raises(UserError, match="no finetune.lora_rank is set"):
        finetune_config(source, overrides={"finetune.lora_alpha": 8})


def test_the_command_without_data_takes_the_embedded_instruction_set(trained_run, tmp_path):
    """`banglaslm finetune RUN --out OUT`, the default its help names, crashed on `len(None)`."""
    code, err = run_cli(["finetune", trained_run, "--out", tmp_path / "chat", "--max-iters", "3"])
    assert code == 0, err
    assert "fine-tuning on the embedded Bangla instruction set (" in err
    assert "everyday" in (tmp_path / "chat" / "data_meta.json").read_text(encoding="utf-8")


def test_a_refused_lora_resume_names_the_hugging_face_folder_given(trained_run, chats, tmp_path):
    """A Hugging Face SOURCE is imported into a temporary run folder: the refusal named that
    folder (deleted by then), not the one the user typed."""
    from banglaslm.interop.hf_export import export_hf
    from banglaslm.interop.hf_import import import_hf

    other = tmp_path / "other"  # other weights than the LoRA run's source
    finetune(trained_run, [str(chats)], other, config_for(trained_run, **{"train.max_iters": 2}),
             progress=False, say=lambda line: None)
    hf = export_hf(other, tmp_path / "hf")
    imported = import_hf(hf, tmp_path / "tmp_import" / "run")
    lora = tmp_path / "lora"
    finetune(trained_run, [str(chats)], lora, config_for(trained_run, **{"train.max_iters": 2, "finetune.lora_rank": 2}),
             progress=False, say=lambda line: None)
    with pytest.raises(UserError, match=f"^{Path(hf).resolve()} does not hold the weights this LoRA run started from"):
        finetune(imported, [str(chats)], lora, resume=True, max_iters=4, progress=False, say=lambda line: None)


def test_a_lora_run_says_how_much_of_the_model_trains(trained_run, chats, tmp_path):
    """The start line names the model; with LoRA only the adapters train, and it says how many."""
    r = subprocess.run(_cmd(trained_run, chats, tmp_path / "run", ("--set", "finetune.lora_rank=2")), env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    trained = load_file(str(tmp_path / "run" / "checkpoints" / "latest.safetensors"))
    adapters = sum(t.numel() for k, t in trained.items() if k.startswith("adapter."))
    first = r.stdout.splitlines()[0]
    assert first.startswith("model: ") and f"; {adapters / 1e6:.2f}M of " in first and "train (the rest is frozen)" in first
