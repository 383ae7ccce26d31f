#!/usr/bin/env bash
# Wheels for the GPU machine (Python 3.12, x86-64, no network): banglaslm's dependencies other
# than torch (and what torch brings) that the GPU check imports (not datasets, peft or
# sentencepiece, which it never loads), plus pytest, into .gpu_wheels/ (git-ignored), for
# benchmarks/gpu_check.sh. Run here, where the package index is reachable:
#   bash benchmarks/gpu_wheels.sh     # prints the folder's size: with the repo, under 64 MiB
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu_wheels
python -m pip download --quiet --dest .gpu_wheels --only-binary=:all: --no-deps \
    --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --implementation cp \
    tokenizers safetensors tqdm "transformers>=5.0" huggingface-hub regex pyyaml packaging fsspec filelock \
    fastapi starlette uvicorn pydantic pydantic-core annotated-types typing-inspection anyio sniffio h11 \
    httpx httpcore certifi idna click matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing \
    python-dateutil six gguf requests urllib3 charset-normalizer pytest pluggy iniconfig
du -sh .gpu_wheels
