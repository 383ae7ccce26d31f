"""`banglaslm quickstart`: the whole pipeline on the embedded corpus, on a laptop CPU.

prepare (BPE sized for a small corpus) → train the `tiny` preset (about five minutes on two
cores) → evaluate on the held-out documents → generate from a few Bangla prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from .config import Opt, SamplingParams, build_config
from .data.corpus import corpus_dir
from .data.folder import DataFolder, is_data_folder
from .data.prepare import prepare
from .evaluation.perplexity import evaluate_text
from .fileio import check_destination, is_writer_file
from .generation.engine import generate
from .report import SAMPLE_SETTINGS
from .runfolder import RunFolder, load_model
from .training.trainer import TrainingInterrupted, train

PROMPTS = ("একদিন সকালে", "আজ বাজারে", "নদীর ধারে", "আমাদের গ্রামে")
QUICKSTART_VOCAB = 1024  # small corpus: small vocabulary, more training tokens per character
# The `tiny` preset trains without dropout (fastest on a CPU, best on a corpus of millions of
# characters); 1,200 steps over the ~80 K tokens of the embedded corpus are ~30 passes, where
# dropout is what keeps the model from memorizing it. It also keeps the cosine schedule: with
# `tiny`'s wsd its held-out bits per character were 2.565 against 2.538 (docs/speedrun-log.md),
# and the batch of 16 and 1,200 steps `tiny` had before the speed run moved it to 8 and 2,400.
# Its head stays tied: untied (as `tiny` now is) it scored 2.558 against 2.538.
QUICKSTART_OVERRIDES = {"model.dropout": 0.25, "model.tie_embeddings": True, "train.lr_schedule": "cosine",
                        "train.batch_size": 16, "train.max_iters": 1200}


def held_out_text(data_dir: Path) -> str:
    """The validation documents, decoded from the val shards (they never shaped training)."""
    data = DataFolder(data_dir)
    tok = data.tokenizer()
    ids = data.tokens("val").read().tolist()
    docs, current = [], []
    for i in ids:
        if i == tok.eod_id:
            if current:
                docs.append(tok.decode(current))
            current = []
        else:
            current.append(i)
    return "\n\n".join(docs)


def _is_quickstart(folder: Path) -> bool:
    """An earlier quick start's folder (data/ and run/, each what it says), which a rerun continues."""
    return {p.name for p in folder.iterdir() if not is_writer_file(p)} <= {"data", "run"} and \
        (not (folder / "data").exists() or is_data_folder(folder / "data")) and \
        (not (folder / "run").exists() or RunFolder(folder / "run").is_run_folder())


def _config(max_iters: int | None):
    """`tiny` with the quick start's dropout; a shorter run gets a warm-up that fits in it."""
    overrides = dict(QUICKSTART_OVERRIDES)
    if max_iters is not None:
        warmup = build_config("tiny").train.warmup_iters
        overrides.update({"train.max_iters": max_iters, "train.warmup_iters": min(warmup, max(0, max_iters // 10))})
    return build_config("tiny", overrides=overrides)


def quickstart(out: Annotated[str, Opt("folder for data/ and run/")] = "quickstart",
               max_iters: Annotated[int | None, Opt("override the tiny preset's step count")] = None,
               say: Callable[[str], None] = print, progress: bool | None = None) -> dict:
    """The whole pipeline on the embedded corpus; what each stage produced, as a dict."""
    out = Path(out)
    data_dir, run_dir = out / "data", out / "run"
    check_destination(out, "quick-start folder", replaceable=_is_quickstart)
    resume = (run_dir / "checkpoints" / "latest.safetensors").is_file()
    config = None if resume else _config(max_iters)  # checked before any work
    say(f"1/4 preparing the embedded Bangla corpus → {data_dir}")
    # its own folder: prepared again where the embedded corpus moved (a new install) or an earlier
    # version wrote it, to the same tokens (the corpus and the BPE training are fixed), so a run goes on
    prepared = prepare([str(corpus_dir())], data_dir, tokenizer="bpe", vocab_size=QUICKSTART_VOCAB,
                       progress=progress, overwrite=True)
    say(prepared.summary())
    say(f"2/4 training the 'tiny' preset → {run_dir}  (Ctrl-C saves; rerun to continue)")
    try:
        result = train(data_dir, run_dir, config, resume=resume, max_iters=max_iters, progress=progress)
    except TrainingInterrupted as exc:  # the quick start resumes by itself: no --resume to add
        raise TrainingInterrupted(exc.iteration, exc.checkpoint, "run the same command again to continue") from None
    session = (f"trained to iteration {result.iterations} ({result.iterations - result.resumed_at} in this session's "
               f"{result.seconds:.0f} s, resumed at {result.resumed_at})" if result.resumed_at else
               f"trained {result.iterations} iterations in {result.seconds:.0f} s")
    say(f"{session}, best val loss {result.best_val_loss:.3f}")
    say("3/4 evaluating on the held-out documents")
    loaded = load_model(run_dir, "best")
    ev = evaluate_text(loaded, held_out_text(data_dir), name="held-out documents")
    say(f"loss {ev.loss:.3f}  perplexity {ev.perplexity:.1f}  bits/byte {ev.bits_per_byte:.3f}  "
        f"bits/char {ev.bits_per_char:.3f}  ({ev.tokens:,} tokens)")
    say("4/4 generating")
    samples = []
    for i, prompt in enumerate(PROMPTS):
        g = generate(loaded, prompt, SamplingParams(**SAMPLE_SETTINGS, seed=i))
        samples.append(g)
        say(f"  » {prompt}{g.text}")
    say(f"\nnext: banglaslm generate {run_dir} --prompt \"...\"   |   banglaslm eval {run_dir} --text FILE")
    return {"prepare": prepared.meta, "train": result, "eval": ev, "samples": samples}
