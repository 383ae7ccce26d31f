"""Training health (training/health.py): each warning sign on synthetic curves, and on real runs
(a small model trained far past one pass of a small corpus overfits, and the early stop ends
it; a data folder whose validation documents also appear in training is flagged as leakage;
a healthy run raises nothing)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import require_literature

from banglaslm.config import build_config
from banglaslm.training import health
from banglaslm.training.trainer import train


def curve(train_losses, val_losses, epochs_per_eval=0.25, clipped=None, params_per_token=10.0):
    return [{"iter": 100 * i, "train": t, "val": v, "epochs": i * epochs_per_eval,
             "clipped": (clipped or [0] * len(train_losses))[i], "params_per_token": params_per_token}
            for i, (t, v) in enumerate(zip(train_losses, val_losses))]


def kinds_over_time(history):
    """Every sign reported, evaluation by evaluation, as the trainer would."""
    return [(history[i - 1]["iter"], s.kind) for i in range(1, len(history) + 1)
            for s in health.new_signs(history[:i])]


HEALTHY = curve([7.0, 5.0, 4.4, 4.1, 3.9, 3.8, 3.75, 3.72], [7.0, 5.1, 4.6, 4.35, 4.25, 4.2, 4.19, 4.18])


def test_a_healthy_curve_raises_nothing():
    assert kinds_over_time(HEALTHY) == []


def test_overfitting_is_reported_once_and_names_the_best_step():
    history = curve([7.0, 5.0, 4.0, 3.5, 3.0, 2.6, 2.2, 1.9], [7.0, 5.2, 4.6, 4.7, 4.8, 4.95, 5.1, 5.3])
    assert kinds_over_time(history) == [(500, "overfitting")]
    sign = health.overfitting(history)
    assert sign.since == 200 and "best.safetensors holds step 200" in sign.evidence
    assert health.evaluations_since_best(history) == 5
    # a rise that is not three in a row is not a trend
    assert health.overfitting(curve([7, 5, 4, 3.5, 3], [7, 5.2, 4.6, 4.7, 4.65])) is None


# a real run: `tiny` for 200 steps on one 26,000-character book (BhondorBahadur, paragraphs split
# train/val) evaluated at 0, 100 and 200; too short for a three-in-a-row trend, plainly overfit
SHORT_OVERFIT = curve([7.6075, 3.2689, 0.5222], [7.6206, 5.5287, 6.3973])


def test_one_large_rise_above_the_best_is_overfitting_without_a_trend():
    assert kinds_over_time(SHORT_OVERFIT) == [(200, "overfitting")]
    sign = health.overfitting(SHORT_OVERFIT)
    assert sign.since == 100 and "rose 16% above its best (5.529 to 6.397)" in sign.evidence
    # a rise within SURGE is noise, however it is reached
    assert health.overfitting(curve([7, 4, 3], [7, 5.0, 5.2])) is None
    # near-zero losses: 10% above the best but within NOISE nats
    assert health.overfitting(curve([7, 0.09, 0.05], [7, 0.10, 0.11])) is None
    # validation up with training up is not overfitting (the training loss did not fall)
    assert health.overfitting(curve([7, 3.0, 3.5], [7, 5.0, 6.0])) is None


def test_an_overfitting_episode_lasts_until_a_new_best_however_the_loss_wavers():
    # a real fine-tune (benchmarks/finetune_learning.py, assistant task), every 50 steps from step 900:
    # validation wavers about its best +5% threshold while training keeps falling
    train = [0.197, 0.199, 0.183, 0.159, 0.168, 0.146, 0.131, 0.127, 0.109, 0.103, 0.095, 0.09, 0.077]
    val = [0.212, 0.237, 0.237, 0.197, 0.216, 0.21, 0.21, 0.237, 0.216, 0.255, 0.223, 0.213, 0.256]
    history = curve([7.7] + train, [7.7] + val)
    # once when it starts (since the best at step 100), once more after the new best at step 400
    assert kinds_over_time(history) == [(300, "overfitting"), (800, "overfitting")]
    assert health.overfitting(history).since == 400


# for each sign, a curve exactly as long as its rule needs, that shows it
SHORTEST = {"overfitting": SHORT_OVERFIT,
            "leakage": curve([7, 5, 4.5, 4.2], [7, 4.0, 3.5, 3.2]),
            "underfitting": curve([7.0, 6.5, 6.48, 6.47, 6.47], [7.0, 6.52, 6.5, 6.49, 6.49]),
            "unstable": curve([7.0, 7.9], [7.0, 8.0])}


@pytest.mark.parametrize("kind", sorted(health.NEEDS))
def test_each_rule_judges_from_as_few_evaluations_as_it_says(kind):
    rule, history = getattr(health, kind), SHORTEST[kind]
    assert len(history) == health.NEEDS[kind] and rule(history) is not None
    assert kind in health.unjudged(len(history) - 1) and kind not in health.unjudged(len(history))


def test_the_report_says_which_signs_a_short_run_could_not_show():
    from banglaslm.report import _warnings
    lines = "\n".join(_warnings([], 3))
    assert "No warning signs" in lines
    assert "too short to judge leakage (needs 4), underfitting (needs 5)" in lines
    assert "too short" not in "\n".join(_warnings([], 5))


def test_underfitting_both_flat_and_high():
    history = curve([7.0, 6.6, 6.5, 6.48, 6.47, 6.47], [7.0, 6.6, 6.52, 6.5, 6.49, 6.49])
    assert kinds_over_time(history) == [(500, "underfitting")]  # flat over the three evaluations to 500
    # flat but low is a finished run, not an underfit one
    assert health.underfitting(curve([7.0, 4.0, 3.5, 3.49, 3.48, 3.48], [7.0, 4.1, 3.6, 3.59, 3.59, 3.59])) is None


def test_unstable_on_a_jump_or_on_clipped_spikes_without_progress():
    assert kinds_over_time(curve([7.0, 5.0, 4.2, 4.9, 4.3], [7.0, 5.1, 4.4, 5.0, 4.5])) == [(300, "unstable")]
    spiky = curve([7.0, 5.0, 4.5, 4.53], [7.0, 5.1, 4.7, 4.75], clipped=[0, 0, 1, 4])
    assert kinds_over_time(spiky) == [(300, "unstable")]
    falling = curve([7.0, 5.0, 4.5, 4.2], [7.0, 5.1, 4.7, 4.5], clipped=[0, 0, 1, 4])
    assert kinds_over_time(falling) == []  # spikes clipped while learning go on: the guard did its job


def test_leakage_below_training_or_no_gap_after_passes():
    below = curve([7.0, 5.0, 4.5, 4.2, 4.0], [7.0, 4.4, 3.9, 3.6, 3.4])
    assert kinds_over_time(below) == [(300, "leakage")]
    no_gap = curve([7.0, 5.0, 4.0, 3.2, 2.6, 2.1], [7.0, 5.0, 4.0, 3.21, 2.6, 2.1], epochs_per_eval=1.0)
    assert kinds_over_time(no_gap) == [(400, "leakage")]  # from 2 passes on, at three evaluations
    early = curve([7.0, 5.0, 4.0, 3.2, 2.6, 2.1], [7.0, 5.0, 4.0, 3.21, 2.6, 2.1], epochs_per_eval=0.2)
    assert kinds_over_time(early) == []  # within the first passes an honest split has no gap either
    # a model with fewer parameters than training tokens cannot memorize its split: no gap is honest
    # (the speed run's nanoGPT baseline, 0.8M parameters on 2.3M characters, after 2-4 passes)
    small = curve([7.0, 1.956, 1.853, 1.823, 1.813], [7.0, 1.930, 1.838, 1.808, 1.801], epochs_per_eval=1.0,
                  params_per_token=0.36)
    assert kinds_over_time(small) == []
    # near the untrained loss (common tokens learned, nothing memorized) no split has a gap yet
    barely = curve([8.31, 7.4, 7.2, 7.1, 7.015], [8.31, 7.45, 7.25, 7.15, 7.075], epochs_per_eval=1.0)
    assert kinds_over_time(barely) == []
    # a fine-tune's first evaluation is of a trained model: there the gate on learning does not apply
    warm = curve([2.0, 1.9, 1.8, 1.7, 1.65], [2.0, 1.905, 1.805, 1.705, 1.655], epochs_per_eval=1.0)
    assert health.leakage(warm, from_scratch=False) is not None and health.leakage(warm) is None
    solved = curve([7.0, 0.5, 0.01, 0.001, 0.0005], [7.0, 0.5, 0.009, 0.0009, 0.0004], epochs_per_eval=5)
    assert health.leakage(solved) is None  # near zero both splits are solved; nothing to compare


def test_a_sign_line_and_record_carry_the_evidence():
    sign = health.overfitting(curve([7, 5, 4, 3.5, 3, 2.6], [7, 5.2, 4.6, 4.7, 4.8, 4.9]))
    assert sign.line().startswith("warning: overfitting since step 200: validation loss rose")
    assert sign.record(500) == {"iter": 500, "event": "overfitting", "since": 200, "evidence": sign.evidence,
                                "advice": sign.advice}


# ---- real runs --------------------------------------------------------------------------------
SMALL = {"model.arch": "modern", "model.n_layer": 2, "model.n_head": 4, "model.n_embd": 128, "model.block_size": 64,
         "model.dropout": 0.0, "train.batch_size": 16, "train.max_iters": 300, "train.warmup_iters": 10,
         "train.eval_interval": 20, "train.eval_iters": 8, "train.log_interval": 10, "train.learning_rate": 5e-3,
         "train.precision": "fp32"}


def paragraphs(count: int) -> list[str]:
    book = require_literature() / "SukumarRay_Prose_PaglaDashu.txt"
    return [p.strip() for p in book.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 80][:count]


def prepared(folder, texts):
    from banglaslm.data.prepare import prepare

    source = folder.parent / f"{folder.name}.jsonl"
    source.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    prepare([str(source)], folder, vocab_size=400, val_fraction=0.15, progress=False)
    return folder


def planted_leak(honest, out):
    """The honest data folder with its validation documents also put into training (once, like
    every training document): a leak."""
    from banglaslm.data.folder import DataFolder, ShardWriter, split_stats, write_meta

    data = DataFolder(honest)
    tok = data.tokenizer()
    docs = {}
    for split in ("train", "val"):
        ids = data.tokens(split).read().tolist()
        cuts = [i for i, t in enumerate(ids) if t == tok.eod_id]
        docs[split] = [ids[a + 1:b] for a, b in zip(cuts, cuts[1:])]
    out.mkdir()
    tok.save(out / "tokenizer.json")
    splits = {}
    for split, group in (("train", docs["train"] + docs["val"]), ("val", docs["val"])):
        writer = ShardWriter(out, split, "00000", tok.eod_id, data.dtype.type, 10**9)
        writer.add([(tok.decode(ids), ids) for ids in group])
        splits[split] = split_stats(writer.close())
    write_meta(out, tok, data.dtype.type, splits, {"val_fraction": 0.15, "seed": 42})
    return out


def events(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"event"' in line]


@pytest.mark.slow
def test_a_small_model_far_past_one_pass_overfits_and_the_early_stop_ends_it(tmp_path, capsys):
    from banglaslm.checkpoint import read_state
    from banglaslm.cli import _done
    from banglaslm.report import write_report

    data = prepared(tmp_path / "data", paragraphs(12))  # about 3,700 tokens: dozens of passes
    run = tmp_path / "run"
    result = train(data, run, build_config(overrides={**SMALL, "train.early_stop_patience": 3,
                                                      "train.time_limit_min": 60}), progress=False)
    # the summary blamed the time limit, not reached, for the early stop
    assert result.stopped_early == 3 and result.time_limit_min == 0
    assert "(train.early_stop_patience = 3 stopped it)" in _done(result)
    found = events(run)
    assert [e["event"] for e in found] == ["overfitting"], found
    assert result.iterations < SMALL["train.max_iters"]  # stopped early
    assert read_state(run / "checkpoints" / "best.safetensors")["iter"] == found[0]["since"]
    err = capsys.readouterr().err
    assert "warning: overfitting since step" in err
    stopped = re.search(r"early stop at step (\d+): the run is overfitting and validation has not improved for (\d+) "
                        r"evaluations \(train.early_stop_patience=3\)", err)
    assert stopped and int(stopped[1]) == result.iterations, err
    history = read_state(run / "checkpoints" / "latest.safetensors")["history"]
    best = min(range(len(history)), key=lambda i: history[i]["val"])
    assert int(stopped[2]) == len(history) - 1 - best >= 3  # the count said is the count
    # The same command with --resume trained on, one interval per resume; now it stops where it stopped
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = train(data, run, resume=True, progress=False)
    assert again.iterations == result.iterations and again.stopped_early == 3 and not again.last_eval
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
    report = write_report(run, out_dir=tmp_path / "report", prompts=("একদিন",), seeds=(1,), bpe_vocab_sizes=())
    assert "**overfitting** since step" in (report / "README.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_validation_documents_that_also_appear_in_training_are_flagged_as_leakage(tmp_path):
    honest = prepared(tmp_path / "data", paragraphs(12))
    run = tmp_path / "run"
    train(planted_leak(honest, tmp_path / "leak"), run, build_config(overrides={**SMALL, "train.max_iters": 120}),
          progress=False)
    found = [e["event"] for e in events(run)]
    assert "leakage" in found and "overfitting" not in found, found


def test_a_healthy_run_raises_nothing(trained_run):
    assert events(trained_run) == []


def test_a_run_from_trained_weights_is_not_called_underfitting(trained_run, data_dir, tmp_path):
    """The rule compares with the first evaluation, an untrained model's in a run from scratch; a
    run from trained weights (--init-from, a fine-tune) improves on its first by little, which is
    no sign of underfitting, and "the untrained model's loss" was the trained model's."""
    from conftest import TINY_SETTINGS

    flat = {**TINY_SETTINGS, "train.learning_rate": 1e-9, "train.max_iters": 30, "train.eval_interval": 5,
            "train.warmup_iters": 1}
    runs = {"scratch": train(data_dir, tmp_path / "scratch", build_config(overrides=flat), progress=False),
            "warm": train(data_dir, tmp_path / "warm", build_config(overrides=flat), init_from=trained_run,
                          progress=False)}
    events = {name: [json.loads(line).get("event") for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
              for name, r in runs.items()}
    assert "underfitting" in events["scratch"] and "underfitting" not in events["warm"]
