"""A run knows what it was started with: resume refuses other data (even with the same
tokenizer), `--resume --set` changes the saved run's settings (not the defaults'), and
`--init-from` starts a new run from an old run's weights."""

import json

import pytest
import torch
from conftest import TINY_SETTINGS, one_line_error, run_cli, set_args
from safetensors import safe_open

from banglaslm.checkpoint import load_checkpoint
from banglaslm.cli import main
from banglaslm.config import build_config
from banglaslm.data.prepare import prepare
from banglaslm.errors import UserError
from banglaslm.training.trainer import train

SHORT = {**TINY_SETTINGS, "train.max_iters": 10, "train.eval_interval": 5}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("identity") / "run"
    train(data_dir, run, build_config(overrides=SHORT), progress=False)
    return run


@pytest.fixture(scope="module")
def other_data(tmp_path_factory, base_run, small_books):
    """Other text, encoded with the run's own tokenizer: only the data differs."""
    out = tmp_path_factory.mktemp("other") / "d"
    prepare([str(small_books[0])], out, tokenizer=str(base_run / "tokenizer.json"), doc_split="paragraph",
            progress=False)
    return out


def test_resume_on_other_data_is_refused_and_points_to_init_from(base_run, other_data, tmp_path):
    before = (base_run / "checkpoints" / "latest.safetensors").read_bytes()
    code, err = run_cli(["train", "--data", other_data, "--out", base_run, "--resume", "--max-iters", "20"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "is not the data the run" in err and f"--init-from {base_run}" in err
    assert (base_run / "checkpoints" / "latest.safetensors").read_bytes() == before  # nothing touched


def test_the_data_identity_is_recorded_with_checksums(base_run, data_dir):
    meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    state = load_checkpoint(base_run / "checkpoints" / "latest.safetensors", weights_only=True).state
    import hashlib

    for split in ("train", "val"):
        shards = meta["splits"][split]["shards"]
        for shard in shards:
            assert shard["sha256"] == hashlib.sha256((data_dir / shard["file"]).read_bytes()).hexdigest()
        digest = hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()
        assert meta["splits"][split]["digest"] == digest == state["data"]["splits"][split]["digest"]


def test_resume_with_set_changes_the_saved_run_not_the_defaults(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    # A run made with a preset and settings that differ from the defaults in many keys.
    code, _ = run_cli(["train", "--data", data_dir, "--out", run, "--preset", "tiny", *set_args(SHORT)])
    assert code == 0
    # What the divergence advice tells users to do: resume with a lower learning rate.
    code = main([str(a) for a in ["train", "--data", data_dir, "--out", run, "--resume", "--max-iters", "14",
                                  "--set", "train.learning_rate=1e-4", "--set", "train.log_interval=7"]])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "\ndone: 14 iterations (4 of them in this session's " in printed.out, printed.out  # not "14 in 2 s"
    # No step was logged before the last evaluation (log_interval 7): its line said "0 tokens/s".
    assert "tokens/s" in printed.out and " 0 tokens/s" not in printed.out, printed.out
    state = json.loads(safe_open(str(run / "checkpoints" / "latest.safetensors"), "pt").metadata()["state"])
    assert state["iter"] == 14 and state["config"]["train"]["learning_rate"] == 1e-4
    assert state["config"]["model"]["n_embd"] == SHORT["model.n_embd"]  # the saved model, not the preset's
    # A setting that would change the run itself is still refused, naming only that key.
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--set", "model.n_layer=3"])
    assert code == 2 and "model.n_layer (2 → 3)" in err and "n_embd" not in err, err
    # tiny unties its head; "auto" would tie this modern model's: another model, refused.
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["model"]["tie_embeddings"] is False
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--set", "model.tie_embeddings=auto"])
    assert code == 2 and "model.tie_embeddings (False → True)" in err, err


def test_init_from_starts_a_new_run_from_the_weights(base_run, other_data, tmp_path):
    new = tmp_path / "new"
    # The model is the source's: a setting that would change its shape is refused by name.
    code, err = run_cli(["train", "--data", other_data, "--out", new, "--init-from", base_run,
                         "--set", "model.n_layer=5"])
    assert code == 2 and "model.n_layer=5 (the source has 2)" in err and not new.exists(), err
    # The source left its head to its arch (modern: tied); saying so is the same model, not a change.
    assert base_run.joinpath("config.json").read_text(encoding="utf-8").count('"tie_embeddings": null') == 1
    code, err = run_cli(["train", "--data", other_data, "--out", new, "--init-from", base_run,
                         *set_args({"train.max_iters": 6, "train.eval_interval": 3, "train.checkpoint_interval": 3,
                                    "train.learning_rate": 3e-4, "model.tie_embeddings": "true"})])
    assert code == 0, err
    source = load_checkpoint(base_run / "checkpoints" / "best.safetensors", weights_only=True)
    state = load_checkpoint(new / "checkpoints" / "latest.safetensors").state
    assert state["iter"] == 6 and state["init_from"]["iter"] == source.state["iter"]
    assert state["init_from"]["weights"] == source.fingerprint()
    assert state["config"]["model"] == load_checkpoint(base_run / "checkpoints" / "best.safetensors").state["config"]["model"]
    # Train settings not given are the source's (its batch size), the given ones apply.
    assert state["config"]["train"]["batch_size"] == SHORT["train.batch_size"]
    assert state["config"]["train"]["learning_rate"] == 3e-4
    assert len(state["history"]) == 3  # its own evaluations only (0, 3, 6): a fresh run
    # Before its first step, the new run's model holds the source's weights exactly.
    from banglaslm.training.trainer import Trainer
    from banglaslm.training.warm_start import WarmStart

    warm = WarmStart(base_run)
    trainer = Trainer(warm.config(None), other_data, tmp_path / "fresh", warm_start=warm, progress=False)
    start = trainer.model.state_dict()
    assert all(torch.equal(start[k], v) for k, v in source.model_state().items())
    assert trainer.state.iter == 0 and trainer.optimizer.state_dict()["state"] == {}
    code, err = run_cli(["train", "--data", other_data, "--out", tmp_path / "x", "--init-from", base_run,
                         "--resume"])
    assert code == 2 and "give one of them" in err


def test_init_from_needs_the_source_tokenizer(base_run, small_books, tmp_path):
    char = tmp_path / "char"
    prepare([str(small_books[0])], char, tokenizer="char", doc_split="paragraph", progress=False)
    with pytest.raises(UserError, match="prepare it with that run's tokenizer"):
        train(char, tmp_path / "r", build_config(overrides=SHORT), init_from=base_run, progress=False)
    assert not (tmp_path / "r").exists()


def test_init_from_a_data_folder_says_it_is_not_a_run(data_dir, tmp_path):
    """It said "No such file or directory (data/config.json)"."""
    for command in (["train", "--data", data_dir, "--out", tmp_path / "r", "--init-from", data_dir],
                    ["finetune", data_dir, "--out", tmp_path / "f"]):
        code, err = run_cli(command)
        one_line_error(code, err, f"{data_dir} is a data folder (prepare wrote it), not a run folder; train a "
                                  f"model on it: banglaslm train --data {data_dir} --out RUN_DIR")
        assert not (tmp_path / "r").exists() and not (tmp_path / "f").exists()


def test_init_from_a_hugging_face_folder_names_that_folder(base_run, small_books, tmp_path):
    """--init-from an HF folder imports it into a scratch folder: a refusal named that folder,
    deleted by the time the user read it, as the tokenizer to prepare with."""
    from banglaslm.interop.hf_export import export_hf

    hf = export_hf(base_run, tmp_path / "hf")
    char = tmp_path / "char"
    prepare([str(small_books[0])], char, tokenizer="char", doc_split="paragraph", progress=False)
    code, err = run_cli(["train", "--data", char, "--out", tmp_path / "r", "--init-from", hf])
    assert code == 2 and f"(imported from {hf.resolve()})" in err and f"prepare --tokenizer {hf.resolve()})" in err, err


def test_a_warm_start_does_not_take_the_source_time_limit(data_dir, other_data, tmp_path, capsys):
    """The source's train.time_limit_min was its own budget: a run started from its weights
    (train --init-from, finetune) trains the steps it is given, and says when a limit stops it."""
    from banglaslm.runfolder import RunFolder
    from banglaslm.training.finetune import finetune_config

    timed = tmp_path / "timed"  # a short run with a time limit it did not reach; 2 steps < finetune's warm-up of 10
    train(data_dir, timed, build_config(overrides={**SHORT, "train.max_iters": 2, "train.eval_interval": 2,
                                                   "train.warmup_iters": 1, "train.time_limit_min": 30}), progress=False)
    new = tmp_path / "new"
    code, err = run_cli(["train", "--data", other_data, "--out", new, "--init-from", timed, "--max-iters", 3,
                         "--set", "train.eval_interval=3"])
    assert code == 0, err
    assert json.loads((new / "config.json").read_text(encoding="utf-8"))["train"]["time_limit_min"] == 0
    config = finetune_config(RunFolder(timed).load_config(), overrides={"train.max_iters": 40})
    assert config.train.time_limit_min == 0 and config.train.max_iters == 40
    # nor its process layout: an FSDP source's train.parallel refused a new run on one process
    from banglaslm.config import inherited
    sharded = RunFolder(timed).load_config()
    sharded.train.parallel = "fsdp"
    assert inherited(sharded).train.parallel == "ddp"
    # a limit given to this run is kept, and the summary names it when it ends the run early
    code = main([str(a) for a in ["train", "--data", other_data, "--out", tmp_path / "clock", "--init-from", timed,
                                  "--max-iters", 100000, "--set", "train.time_limit_min=0.0001",
                                  "--set", "train.log_interval=1"]])
    out = capsys.readouterr().out
    assert code == 0
    assert "train.time_limit_min = 0.0001 stopped it" in out and "warm-up" not in out, out
    # ended inside its warm-up, the rate never reached its peak: said (it read as a normal finish)
    code = main([str(a) for a in ["train", "--data", other_data, "--out", tmp_path / "cold", "--init-from", timed,
                                  "--max-iters", 100000, "--set", "train.time_limit_min=0.0001",
                                  "--set", "train.warmup_iters=50", "--set", "train.log_interval=1"]])
    out = capsys.readouterr()
    out = out.out + out.err
    assert code == 0 and ("stopped it inside its warm-up of 50 iterations: the learning rate never reached its peak; "
                          "lower train.warmup_iters or raise the limit") in out, out
    # a new run's warm-up is checked against its --max-iters (it was against the default's or the preset's 10)
    code = main([str(a) for a in ["train", "--data", other_data, "--out", tmp_path / "fresh", "--max-iters", 100000,
                                  *set_args(SHORT), "--set", "train.warmup_iters=20000",
                                  "--set", "train.time_limit_min=0.0001"]])
    out = capsys.readouterr()
    assert code == 0 and "inside its warm-up of 20,000 iterations" in out.out, out.err
    # resumed with its time used up, it names the limit to raise (it said --max-iters, which changed nothing)
    code = main([str(a) for a in ["train", "--data", other_data, "--out", tmp_path / "clock", "--resume",
                                  "--max-iters", 200000]])
    out = capsys.readouterr().out
    assert code == 0 and "already used its train.time_limit_min (0.0001 min)" in out and "--max-iters" not in out, out


def test_a_resume_shorter_than_the_run_is_refused_and_changes_nothing(base_run, data_dir, tmp_path):
    """`--resume --max-iters 50` on a run at 100 said it had finished, and saved max_iters 50 as
    the run's own (a later plain --resume then stopped at 50)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    done = load_checkpoint(run / "checkpoints" / "latest.safetensors").state["iter"]
    before = (run / "config.json").read_bytes()
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--max-iters", done - 1])
    one_line_error(code, err, f"is below the {done} iterations")
    assert (run / "config.json").read_bytes() == before


def test_a_resume_with_nothing_left_to_train_leaves_the_run_folder_as_it_was(base_run, data_dir, tmp_path):
    """`--resume --set train.learning_rate=...` on a finished run said it had finished and wrote
    the new rate into config.json: the next resume trained at it, unasked."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--set", "train.learning_rate=0.0001"])
    assert code == 0, err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
