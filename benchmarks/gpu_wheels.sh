#!/usr/bin/env bash
# Wheels for the GPU machine (Python 3.12, x86-64, no network): banglaslm's dependencies other
# than torch (and what torch brings) that the GPU check imports, prepare's datatrove among them (not datasets, peft or
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
    fastapi opentelemetry-api starlette uvicorn pydantic pydantic-core annotated-types typing-inspection anyio sniffio h11 \
    httpx httpcore certifi idna click matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing \
    python-dateutil six gguf requests urllib3 charset-normalizer pytest pluggy iniconfig \
    datatrove loguru humanize dill multiprocess xxhash
# datatrove's wheel carries an 18 MB URL block list (for its URL filter, which banglaslm never
# uses); rewritten without it, the folder fits beside the repo in the carry limit.
python - <<'PY'
import glob, zipfile
for wheel in glob.glob(".gpu_wheels/datatrove-*.whl"):
    with zipfile.ZipFile(wheel) as z:
        items = [(i, z.read(i.filename)) for i in z.infolist() if "url_filterblacklists" not in i.filename]
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in items:
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(l for l in data.splitlines(True) if b"url_filterblacklists" not in l)
            z.writestr(info, data)
PY
du -sh .gpu_wheels
