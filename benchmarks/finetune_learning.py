"""Does fine-tuning teach what it is taught? A checkable task with held-out values.

    python benchmarks/finetune_learning.py                  # base: the quick start's model (trained here, cached)
    python benchmarks/finetune_learning.py --task numerals --base RUN_DIR --steps 2000

Two tasks, generated from templates. `weekday`: the day after a named weekday, asked in twelve
phrasings; for each day some phrasings are held out of training and the test asks exactly those.
`numerals`: write a number in Bangla numerals ("347 বাংলা অঙ্কে লেখো।" → "৩৪৭") or back in
English digits; the test asks about numbers never seen in training. Scored: greedy answers
exactly right on the held-out prompts, for the base model, after fine-tuning with the loss on
answers only, and with the loss on every token (the `finetune.loss_on=all` ablation) for the
same number of steps. Prints a table; appends one JSON line per run to WORK/finetune_learning.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from banglaslm.chat_template import chat_stops, clean_answer, encode_chat  # noqa: E402
from banglaslm.config import SamplingParams  # noqa: E402
from banglaslm.generation.engine import Engine  # noqa: E402
from banglaslm.runfolder import load_model  # noqa: E402

BANGLA_DIGITS = str.maketrans("0123456789", "০১২৩৪৫৬৭৮৯")
TO_BANGLA = ["{n} সংখ্যাটি বাংলা অঙ্কে লেখো।", "বাংলা অঙ্কে লেখো: {n}", "{n} কে বাংলা অঙ্কে কীভাবে লিখব?"]
TO_ENGLISH = ["{b} সংখ্যাটি ইংরেজি অঙ্কে লেখো।", "ইংরেজি অঙ্কে লেখো: {b}"]


def conversation(n: int, rng: random.Random) -> tuple[list[dict], str]:
    """One question about `n` (either direction, a random phrasing) and its exact answer."""
    bangla = str(n).translate(BANGLA_DIGITS)
    if rng.random() < 0.5:
        question, answer = rng.choice(TO_BANGLA).format(n=n), bangla
    else:
        question, answer = rng.choice(TO_ENGLISH).format(b=bangla), str(n)
    return [{"role": "user", "content": question}], answer


def task(train_size: int = 2000, test_size: int = 200, seed: int = 0, high: int = 10_000):
    """(training conversations with answers, held-out (messages, answer) pairs): numbers in
    [0, high), the held-out ones never in the training set."""
    rng = random.Random(seed)
    numbers = rng.sample(range(high), train_size + test_size)
    held_out, seen = numbers[:test_size], numbers[test_size:]
    train = []
    for n in seen:
        messages, answer = conversation(n, rng)
        train.append({"messages": messages + [{"role": "assistant", "content": answer}]})
    return train, [conversation(n, rng) for n in held_out]


DAYS = ["রবিবার", "সোমবার", "মঙ্গলবার", "বুধবার", "বৃহস্পতিবার", "শুক্রবার", "শনিবার"]
DAY_AFTER = ["{d}ের পরের দিন কী বার?", "{d}ের পরে কোন বার আসে?", "আজ {d} হলে কাল কী বার?",
             "বলো তো, {d}ের পরদিন কী বার?", "{d} শেষ হলে কোন বার শুরু হয়?", "{d}ের ঠিক পরের বারটি কী?",
             "{d}ের পরে কী বার?", "আজ যদি {d} হয়, আগামীকাল কী বার হবে?", "{d}ের পরের বারের নাম বলো।",
             "সপ্তাহে {d}ের পরে কোন দিন?", "গতকাল {d} ছিল, আজ কী বার?", "{d} পেরোলে কী বার আসে?"]


def weekday_task(seed: int = 0, held_out_per_day: int = 3):
    """The day after a named weekday, in twelve phrasings: for each day, `held_out_per_day`
    phrasings are never asked about that day in training, and the test asks exactly those."""
    rng = random.Random(seed)
    train, tests = [], []
    for i, day in enumerate(DAYS):
        answer = f"{DAYS[(i + 1) % 7]}।"
        phrasings = rng.sample(DAY_AFTER, len(DAY_AFTER))
        for k, phrasing in enumerate(phrasings):
            messages = [{"role": "user", "content": phrasing.format(d=day)}]
            if k < held_out_per_day:
                tests.append((messages, answer))
            else:
                train.append({"messages": messages + [{"role": "assistant", "content": answer}]})
    return train, tests


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def exact_match(run_dir: Path, tests: list[tuple[list[dict], str]], max_new_tokens: int = 16) -> float:
    """Share of held-out prompts whose greedy answer is exactly right."""
    loaded = load_model(run_dir)
    engine = Engine(loaded.model, loaded.tokenizer)
    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True, stop=chat_stops())
    right = 0
    for messages, answer in tests:
        ids, _ = encode_chat(loaded.tokenizer, messages)
        text = "".join(engine.stream(ids, params))
        right += clean_answer(text) == answer
    return right / len(tests)


def base_run(work: Path, iters: int) -> Path:
    """The quick start's model (embedded corpus, `tiny`), trained once into WORK."""
    from banglaslm.quickstart import quickstart

    run = work / "quickstart" / "run"
    if not (run / "checkpoints" / "best.safetensors").is_file():
        quickstart(str(work / "quickstart"), max_iters=iters, say=lambda line: None, progress=False)
    return run


def main() -> None:
    from banglaslm.config import parse_set_args
    from banglaslm.runfolder import RunFolder
    from banglaslm.training.finetune import finetune, finetune_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=None, help="run folder to fine-tune (default: a quick-start model)")
    ap.add_argument("--base-iters", type=int, default=1200, help="steps of the quick-start base when trained here")
    ap.add_argument("--task", choices=["weekday", "numerals"], default="weekday")
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps for every variant")
    ap.add_argument("--train-size", type=int, default=2000, help="numerals: training conversations")
    ap.add_argument("--test-size", type=int, default=200, help="numerals: held-out numbers")
    ap.add_argument("--variants", nargs="+", default=["assistant", "all"], help="finetune.loss_on values")
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config setting for every variant")
    ap.add_argument("--work", default="/tmp/banglaslm-finetune-learning")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = Path(args.base) if args.base else base_run(work, args.base_iters)
    train_rows, tests = task(args.train_size, args.test_size) if args.task == "numerals" else weekday_task()
    data = write_jsonl(train_rows, work / f"{args.task}.jsonl")
    rows = [{"model": "base", "steps": 0, "exact": exact_match(base, tests), "seconds": 0.0}]
    for loss_on in args.variants:
        out = work / f"ft-{args.task}-{loss_on}-{args.steps}-r{args.lora_rank}"
        overrides = {**parse_set_args(args.set), "finetune.loss_on": loss_on, "finetune.val_fraction": 0.05}
        if args.lora_rank:
            overrides["finetune.lora_rank"] = args.lora_rank
        config = finetune_config(RunFolder(base).load_config(), overrides=overrides)
        if out.exists():
            import shutil

            shutil.rmtree(out)
        started = time.perf_counter()
        result = finetune(base, [str(data)], out, config, max_iters=args.steps, progress=False, say=lambda line: None)
        rows.append({"model": f"loss on {loss_on}" + (f", LoRA r={args.lora_rank}" if args.lora_rank else "")
                     + "".join(f", {s}" for s in args.set),
                     "steps": result.iterations, "exact": exact_match(out, tests),
                     "seconds": round(time.perf_counter() - started, 1), "val_loss": result.best_val_loss})
    print(f"task: {args.task}; held-out prompts: {len(tests)}; training conversations: {len(train_rows)}; "
          f"base: {base}")
    print("| model | fine-tuning steps | exact answers (held-out prompts) | best val loss | seconds |")
    print("|---|---|---|---|---|")
    with open(work / "finetune_learning.jsonl", "a", encoding="utf-8") as log:
        for row in rows:
            val = f"{row['val_loss']:.3f}" if "val_loss" in row else "-"
            print(f"| {row['model']} | {row['steps']} | {row['exact']:.1%} | {val} | {row['seconds']} |")
            log.write(json.dumps({**row, "task": args.task, "base": str(base)}) + "\n")


if __name__ == "__main__":
    main()
