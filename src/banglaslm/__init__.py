"""banglaslm: build a small language model from scratch, Bangla first.

The pipeline, as plain functions (the CLI is a thin layer over them):

    from banglaslm import prepare, build_config, train, load_model, evaluate_file, generate
    prepare(["my_texts/"], "data")                          # text → tokenizer → token bins
    train("data", "runs/first", build_config("tiny"))        # → checkpoints, metrics, plot
    model = load_model("runs/first")                         # best checkpoint
    print(evaluate_file(model, "held_out.txt"))              # loss, perplexity, bits/char
    print(generate(model, "একদিন সকালে").text)
"""

import os as _os
import sys as _sys

# `banglaslm serve`: idle OpenMP threads sleep instead of spinning, which keeps latency steady on
# a machine shared with other busy processes (BENCHMARKS.md, "Server under load"). libgomp reads
# this once, when torch loads, so it is set here, before anything imports torch; a value in the
# environment wins. (Under `python -m`, argv[0] is "-m" while the package imports.)
if _sys.argv[1:2] == ["serve"] and _os.path.basename(_sys.argv[0]) in ("banglaslm", "-m", "__main__.py"):
    _os.environ.setdefault("OMP_WAIT_POLICY", "passive")

# The names below load on first use (PEP 562), so a process that needs one module (a prepare
# worker, say) does not import torch and the rest: a worker then costs tens of MB, not hundreds.
def __getattr__(name: str):
    if name in ("PRESETS", "ModelConfig", "RunConfig", "SamplingParams", "TrainConfig", "build_config"):
        from . import config as module
    elif name == "prepare":
        from .data import prepare as module
    elif name == "UserError":
        from . import errors as module
    elif name in ("evaluate_file", "evaluate_text"):
        from .evaluation import perplexity as module
    elif name in ("Engine", "generate"):
        from .generation import engine as module
    elif name == "load_model":
        from . import runfolder as module
    elif name == "normalize":
        from . import text as module
    elif name == "Tokenizer":
        from . import tokenizer as module
    elif name == "train":
        from .training import trainer as module
    else:
        raise AttributeError(f"module 'banglaslm' has no attribute {name!r}")
    globals()[name] = value = getattr(module, name)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "PRESETS", "ModelConfig", "RunConfig", "TrainConfig", "SamplingParams", "build_config", "UserError",
    "evaluate_file", "evaluate_text", "Engine", "generate", "normalize", "prepare", "load_model", "Tokenizer", "train",
]
__version__ = "0.1.0"
