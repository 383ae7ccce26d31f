#!/usr/bin/env bash
# Wheels for the GPU machine (Python 3.12, x86-64, no network): banglaslm's dependencies other
# than torch and what torch brings, plus pytest, into .gpu_wheels/ (git-ignored), for
# benchmarks/gpu_check.sh. Run here, where the package index is reachable:
#   bash benchmarks/gpu_wheels.sh && du -sh .gpu_wheels     # must stay well under 64 MiB
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu_wheels
python -m pip download --quiet --dest .gpu_wheels --only-binary=:all: --no-deps \
    --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --implementation cp \
    tokenizers safetensors tqdm "transformers>=5.0" huggingface-hub hf-xet regex pyyaml packaging \
    fastapi starlette uvicorn pydantic pydantic-core annotated-types typing-inspection anyio sniffio h11 \
    httpx httpcore certifi idna click matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing \
    python-dateutil six gguf sentencepiece protobuf peft accelerate psutil datasets pyarrow dill \
    multiprocess xxhash pandas pytz tzdata requests urllib3 charset-normalizer aiohttp fsspec \
    pytest pluggy iniconfig hypothesis sortedcontainers attrs
du -sh .gpu_wheels
