"""Training health: the warning signs the course teaches, read from the evaluation history.

Why here and not in the user's head: overfitting, underfitting, instability and data leakage
each leave a plain mark on the two loss curves, and a run that says so when it happens saves
a wasted night. Every sign is judged from `history` alone (one {"iter", "train", "val",
"clipped", "epochs", "params_per_token"} per evaluation; "train" is the loss on the same fixed
training batches each time, "clipped" the guard's count of clipped updates, "epochs" the passes
over the training split, "params_per_token" the model's parameters over that split's tokens),
so a resumed run judges exactly as an uninterrupted one. Thresholds and their reasons:
docs/training.md, "Training health".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise

WINDOW = 3             # evaluations in a row a trend must hold
LEAK_MARGIN = 0.10     # validation this far (relative) below training counts as below ...
NOISE = 0.02           # ... and any difference in loss must exceed this many nats (near-zero losses)
EPOCHS = 2.0           # after this many passes an honest validation loss sits above the training loss ...
GAP = 0.01             # ... by more than this (relative); a leaked one does not ...
CAPACITY = 1.0         # ... if the model has at least this many parameters per training token to memorize it with
SOLVED = 0.1           # nats/token below which both splits are solved and not compared
PLATEAU = 0.01         # relative improvement over WINDOW evaluations that counts as flat
HIGH = 0.8             # a loss above this share of the first evaluation's learned little
JUMP = 0.10            # relative rise of the fixed-batch training loss between two evaluations
SPIKES = 3             # updates the guard clipped between two evaluations, with the loss not falling
SURGE = 0.05           # validation this far (relative) above its best is overfitting without waiting for a trend


# evaluations (the untrained model's first among them) each rule needs before it can judge
NEEDS = {"overfitting": 3, "leakage": WINDOW + 1, "underfitting": WINDOW + 2, "unstable": 2}


@dataclass(frozen=True)
class Sign:
    kind: str        # "overfitting" | "underfitting" | "unstable" | "leakage"
    since: int       # the iteration it started at
    evidence: str
    advice: str

    def line(self) -> str:
        return f"warning: {self.kind} since step {self.since}: {self.evidence}; {self.advice}"

    def record(self, it: int) -> dict:
        """The metrics.jsonl event for this sign, noticed at evaluation `it`."""
        return {"iter": it, "event": self.kind, **{k: v for k, v in asdict(self).items() if k != "kind"}}


def overfitting(history: list[dict]) -> Sign | None:
    """Training loss fell and the gap grew while validation loss rose: at WINDOW evaluations in a
    row, or at once by more than SURGE (and NOISE) above its best, which a short run with few
    evaluations shows long before it could show a trend. The episode lasts until validation
    reaches a new best, so a loss that wavers about a threshold is not reported again and again."""
    best = min(range(len(history)), key=lambda i: history[i]["val"]) if history else 0
    for end in range(len(history), best + 1, -1):
        if sign := _overfit_at(history[:end], history[best]):
            return sign
    return None


def _overfit_at(history: list[dict], best: dict) -> Sign | None:
    """The overfitting rule judged at the last evaluation of `history`, whose best is `best`."""
    if len(history) < NEEDS["overfitting"]:
        return None
    w, last = history[-(WINDOW + 1):], history[-1]
    rising = len(w) == WINDOW + 1 and all(b["val"] > a["val"] for a, b in pairwise(w))
    surged = last["val"] > max(best["val"] * (1 + SURGE), best["val"] + NOISE)
    start = w[0] if rising else best
    if not ((rising or surged) and last["train"] < start["train"]
            and last["val"] - last["train"] > start["val"] - start["train"]):
        return None
    how = (f"rose at {WINDOW} evaluations in a row" if rising
           else f"rose {last['val'] / best['val'] - 1:.0%} above its best")
    return Sign("overfitting", best["iter"],
                f"validation loss {how} ({start['val']:.3f} to {last['val']:.3f}) while training loss fell "
                f"({start['train']:.3f} to {last['train']:.3f}); best.safetensors holds step {best['iter']}",
                "more data, more dropout (model.dropout), a smaller model, or stop here "
                "(train.early_stop_patience stops such a run)")


def leakage(history: list[dict], from_scratch: bool = True) -> Sign | None:
    """At WINDOW evaluations in a row (the untrained first one aside): validation loss below
    training loss by more than LEAK_MARGIN (and NOISE), or, after EPOCHS passes over the
    training split, not above it by more than GAP while the model has CAPACITY to memorize the
    split and, in a run from scratch, has learned something (training loss below HIGH of the
    first, untrained evaluation's; near the untrained loss both splits sit level on any data):
    text the model has memorized as well as its training text. (A model with fewer
    parameters than training tokens shows no gap on an honest split either: nanoGPT's 0.8M-parameter
    char model on the 2.3M-character shared books ends 0.7% *below* it after 4 passes.)"""
    if len(history) < NEEDS["leakage"]:
        return None
    w = history[1:][-WINDOW:]
    if all(e["val"] < min(e["train"] * (1 - LEAK_MARGIN), e["train"] - NOISE) for e in w):
        how = "below training loss"
    elif all(e.get("epochs", 0) >= EPOCHS and e.get("params_per_token", CAPACITY) >= CAPACITY
             and (not from_scratch or e["train"] < HIGH * history[0]["train"]) and SOLVED < e["val"] <= e["train"] * (1 + GAP) for e in w):
        how = f"at most {GAP:.0%} above training loss after {w[0]['epochs']:.1f} passes over the training split"
    else:
        return None
    return Sign("leakage", w[0]["iter"],
                f"validation loss is {how} at {WINDOW} evaluations in a row (last: val {w[-1]['val']:.3f}, "
                f"train {w[-1]['train']:.3f})",
                "held-out text the model predicts as well as its training text usually also appears in "
                "training: check the data for duplicates across the split (an easy validation set, or rows made "
                "from templates, where held-out rows are as predictable as the rest, look the same)")


def underfitting(history: list[dict]) -> Sign | None:
    """Both losses flat (each improved by less than PLATEAU over WINDOW evaluations) while still
    above HIGH of the first evaluation's loss."""
    if len(history) < NEEDS["underfitting"]:
        return None
    first, w = history[0], history[-(WINDOW + 1):]
    flat = all(w[-1][s] > w[0][s] * (1 - PLATEAU) for s in ("train", "val"))
    if not (flat and w[-1]["train"] > HIGH * first["train"]):
        return None
    return Sign("underfitting", w[0]["iter"],
                f"training and validation loss stopped falling at {w[-1]['train']:.3f} / {w[-1]['val']:.3f}, "
                f"{w[-1]['train'] / first['train']:.0%} of the untrained model's {first['train']:.3f}",
                "a higher train.learning_rate, a bigger model, or a check of the data (is it text the tokenizer "
                "represents?)")


def unstable(history: list[dict]) -> Sign | None:
    """Between the last two evaluations the fixed-batch training loss rose by more than JUMP (and
    NOISE), or it rose at all (by NOISE) while the update guard clipped SPIKES or more updates."""
    if len(history) < NEEDS["unstable"]:
        return None
    a, b = history[-2], history[-1]
    clipped = b.get("clipped", 0) - a.get("clipped", 0)
    rise = b["train"] - a["train"]
    if rise > max(JUMP * a["train"], NOISE):
        evidence = f"the loss on the same training batches rose from {a['train']:.3f} to {b['train']:.3f}"
    elif clipped >= SPIKES and rise > NOISE:
        evidence = f"{clipped} updates had gradient spikes the guard clipped"
    else:
        return None
    return Sign("unstable", a["iter"], f"{evidence} between steps {a['iter']} and {b['iter']}",
                "a lower train.learning_rate or a longer train.warmup_iters")


def unjudged(evaluations: int) -> dict[str, int]:
    """The signs a run with this many evaluations was too short to show, each with the number of
    evaluations its rule needs."""
    return {kind: n for kind, n in NEEDS.items() if evaluations < n}


def signs(history: list[dict], from_scratch: bool = True) -> list[Sign]:
    """Every warning sign the history shows now. `from_scratch`: the first evaluation is of an
    untrained model; in a fine-tune or an --init-from run it is of a trained one, which such a run
    improves on by little (no underfitting judged, and leakage not gated on learning)."""
    found = [overfitting(history), leakage(history, from_scratch), unstable(history)]
    if from_scratch:
        found.append(underfitting(history))
    return [s for s in found if s is not None]


def new_signs(history: list[dict], from_scratch: bool = True) -> list[Sign]:
    """The signs shown after the last evaluation that the one before did not show: each episode
    is reported once, when it begins."""
    before = {s.kind for s in signs(history[:-1], from_scratch)}
    return [s for s in signs(history, from_scratch) if s.kind not in before]


def evaluations_since_best(history: list[dict]) -> int:
    """Evaluations after the one with the lowest validation loss."""
    best = min(range(len(history)), key=lambda i: history[i]["val"])
    return len(history) - 1 - best
