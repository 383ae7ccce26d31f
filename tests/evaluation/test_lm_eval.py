"""lm-evaluation-harness scores an exported run offline, and agrees with `banglaslm eval`.

How lm-eval 0.4.x scores a `loglikelihood_rolling` document with `--model hf` (see
`lm_eval.utils.get_rolling_token_windows(..., context_len=1)` and `HFLM.loglikelihood_rolling`):
the text is encoded with the exported tokenizer (told to add no special tokens: add_bos_token=False); L = the model's
max positions = our block_size; the first window is [prefix] + tokens[:L-1] scoring tokens[:L],
where prefix is the tokenizer's bos_token_id, which export sets to our end-of-document id; each
later window scores the next (up to) L tokens, fed the L tokens that end just before its last
one, i.e. the windows do not overlap and the last, shorter one gets extra context. Summed over
documents, bits_per_byte = -sum(loglikelihood) / ln 2 / sum(UTF-8 bytes of the document).

That is exactly `banglaslm.evaluation.perplexity.score_tokens` with stride = block_size: it also prepends the
end-of-document token, scores windows of block_size tokens that advance by the stride, and moves
its last window back to end at the text's end, scoring only the tokens not yet scored. Its
bytes are those of the normalized text, which is what `write_perplexity_task` stores. So the two
must agree to floating-point rounding; see TOLERANCE.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hf_offline, require_literature

from banglaslm.errors import UserError
from banglaslm.evaluation.lm_eval_task import write_perplexity_task
from banglaslm.text import normalize

TASK = "bangla_ppl_test"
# Relative tolerance between lm-eval (transformers' LlamaForCausalLM / GPT2LMHeadModel) and
# banglaslm (our model): two float32 implementations of the same function, so they differ only
# by rounding. Float32 logits of size ~10 carry ~1e-6 absolute error, so each token's log-prob
# is off by ~1e-6 nats at worst; even with no cancellation over the ~1,800 tokens (~10,000 nats
# in all) that is ~2e-7 relative. Measured: equal to ~1e-16 relative. Both controls below move
# the result by well over 10x the tolerance (measured on the tiny runs: the first token of each
# document left unscored, as without lm-eval's prefix token, ~1e-3; stride 1, so that every token
# is scored after a full window -- small because a 40-step model barely uses its context: stride
# block/2 moved it by only 8e-6 once the test data changed, so the control takes the most context).
TOLERANCE = 1e-6
SLICE_CHARS = 1500  # two ~1,500-character slices of real books: ~1,800 tokens, a few seconds


@pytest.fixture(scope="module")
def lm_eval():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="lm-eval's hf model needs accelerate: pip install 'lm-eval[hf]'")
    return pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def texts(small_books, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("lm_eval_texts")
    out = []
    for book in small_books[:2]:
        part = folder / book.name
        part.write_text(book.read_text(encoding="utf-8")[:SLICE_CHARS], encoding="utf-8")
        out.append(part)
    return out


@pytest.fixture(scope="module")
def task_dir(texts, tmp_path_factory) -> Path:
    return write_perplexity_task(texts, tmp_path_factory.mktemp("lm_eval_task") / "task", name=TASK)


def reference_numbers(run: Path, texts: list[Path]) -> dict:
    """banglaslm's own numbers for the same documents: nats per document with stride =
    block_size (lm-eval's windows), and two controls that each change one thing."""
    from banglaslm.evaluation.perplexity import evaluate_text, score_tokens
    from banglaslm.runfolder import load_model

    loaded = load_model(run)
    block = loaded.config.model.block_size
    docs = [normalize(p.read_text(encoding="utf-8")) for p in texts]
    same = [evaluate_text(loaded, d, stride=block) for d in docs]
    full = [evaluate_text(loaded, d, stride=1) for d in docs]  # every token after a full window of context
    # No end-of-document prefix: the first token becomes context only, never scored.
    no_prefix = [score_tokens(loaded.model, loaded.tokenizer.encode(d, normalized=True), block) for d in docs]
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)

    def bpb(nats: list[float]) -> float:
        return sum(nats) / math.log(2) / n_bytes

    nats = [r.loss * r.tokens for r in same]
    return {
        "docs": docs, "nats": nats, "bits_per_byte": bpb(nats),
        "controls": {"stride=1": bpb([r.loss * r.tokens for r in full]),
                     "no end-of-document prefix": bpb(no_prefix)},
        "words": sum(len(re.split(r"\s+", d)) for d in docs),
    }


@pytest.fixture(scope="module")
def prepared(texts, tmp_path_factory):
    """run folder -> (its Hugging Face export, its reference numbers), built once per run."""
    from banglaslm.interop.hf_export import export_hf

    cache: dict[Path, tuple[Path, dict]] = {}

    def get(run: Path) -> tuple[Path, dict]:
        if run not in cache:
            cache[run] = (export_hf(run, tmp_path_factory.mktemp("lm_eval_hf") / "hf"),
                          reference_numbers(run, texts))
        return cache[run]

    return get


# The "gpt" export (GPT2LMHeadModel) also agrees exactly (measured); marked slow as it costs a
# second training run, export and evaluation.
@pytest.fixture(scope="module", params=["modern", pytest.param("gpt", marks=pytest.mark.slow)])
def case(request, prepared) -> tuple[Path, dict]:
    return prepared(request.getfixturevalue("trained_run" if request.param == "modern" else "trained_gpt_run"))


@pytest.fixture(scope="module")
def api_results(lm_eval, case, task_dir, tmp_path_factory) -> dict:
    from lm_eval.tasks import TaskManager

    exported = case[0]
    with pytest.MonkeyPatch.context() as mp:
        hf_offline(mp, tmp_path_factory.mktemp("hf_datasets_cache"))
        out = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={exported},dtype=float32,add_bos_token=False", tasks=[TASK],
            # include_defaults=False: indexing lm-eval's ~14,000 built-in task files
            # takes longer than the evaluation itself.
            task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
            device="cpu", batch_size=8, log_samples=True, bootstrap_iters=0,
        )
    return out


# ---- lm-eval agrees with banglaslm ------------------------------------------------------------
def test_lm_eval_bits_per_byte_matches_banglaslm(api_results, case):
    require_literature()  # its figures hold for models of the shared books, not the stand-in corpus
    reference = case[1]
    got = api_results["results"][TASK]
    assert got["bits_per_byte,none"] == pytest.approx(reference["bits_per_byte"], rel=TOLERANCE)
    # Perplexities compared in log space (an exponent amplifies relative rounding): the same
    # total log-likelihood over lm-eval's byte count and its word count (re.split(r"\s+")).
    assert math.log2(got["byte_perplexity,none"]) == pytest.approx(reference["bits_per_byte"], rel=TOLERANCE)
    nats_from_words = math.log(got["word_perplexity,none"]) * reference["words"]
    assert nats_from_words == pytest.approx(sum(reference["nats"]), rel=TOLERANCE)
    # The controls: change one thing lm-eval does and the number moves by far more than the
    # tolerance, so the agreement above cannot come from a tolerance too loose to tell.
    for what, value in reference["controls"].items():
        assert abs(value / reference["bits_per_byte"] - 1) > 10 * TOLERANCE, what


def test_lm_eval_scores_each_document_as_banglaslm_does(api_results, case):
    reference = case[1]
    samples = api_results["samples"][TASK]
    assert len(samples) == len(reference["docs"])
    by_text = {s["doc"]["text"]: s for s in samples}
    assert set(by_text) == set(reference["docs"])  # lm-eval saw the normalized text, unchanged
    for doc, nats in zip(reference["docs"], reference["nats"]):
        loglikelihood = by_text[doc]["filtered_resps"][0]
        loglikelihood = loglikelihood[0] if isinstance(loglikelihood, (list, tuple)) else loglikelihood
        assert -float(loglikelihood) == pytest.approx(nats, rel=TOLERANCE)


@pytest.mark.slow
def test_lm_eval_command_line_offline(lm_eval, prepared, trained_run, task_dir, tmp_path):
    """The documented command, in a fresh process with only the environment made offline.
    Slow: the command line indexes all of lm-eval's built-in tasks (~15 s of its ~20 s)."""
    exported, reference = prepared(trained_run)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets_cache"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
           "--model_args", f"pretrained={exported},dtype=float32,add_bos_token=False", "--include_path", str(task_dir),
           "--tasks", TASK, "--device", "cpu", "--batch_size", "8", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / "out").rglob("results_*.json"))
    assert len(results) == 1, proc.stderr[-3000:]
    got = json.loads(results[0].read_text(encoding="utf-8"))["results"][TASK]
    assert got["bits_per_byte,none"] == pytest.approx(reference["bits_per_byte"], rel=TOLERANCE)


# ---- the task folder --------------------------------------------------------------------------
def test_task_folder_contents(tmp_path):
    yaml = pytest.importorskip("yaml")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    # BOM, tab, double spaces, CRLF runs, a decomposed য় (য + nukta), a trailing space
    a.write_bytes("\ufeff  আমার\tসোনার  বাংলা\r\n\r\n\r\n\r\nআমি তোমা\u09af\u09bc ভালোবাসি ".encode("utf-8"))
    b.write_text('["not", "a list"]', encoding="utf-8")  # stays text (lm-eval literal_evals "[...]" templates)
    out = write_perplexity_task([a, b], tmp_path / "nested" / "task", name="my-task_1")
    assert out == (tmp_path / "nested" / "task").absolute()
    assert sorted(p.name for p in out.iterdir()) == ["my-task_1.jsonl", "my-task_1.yaml"]
    rows = [json.loads(line) for line in (out / "my-task_1.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == [{"text": "আমার সোনার বাংলা\n\nআমি তোমা\u09df ভালোবাসি", "source": "a.txt"},
                    {"text": '["not", "a list"]', "source": "b.txt"}]
    spec = yaml.safe_load((out / "my-task_1.yaml").read_text(encoding="utf-8"))
    assert spec["task"] == "my-task_1"
    assert spec["output_type"] == "loglikelihood_rolling"
    assert spec["doc_to_target"] == "text" and spec["test_split"] == "test"
    data = Path(spec["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and data == out / "my-task_1.jsonl"
    assert [m["metric"] for m in spec["metric_list"]] == ["word_perplexity", "byte_perplexity", "bits_per_byte"]
    # Written again over the same folder: replaced, not appended to.
    write_perplexity_task([b], out, name="my-task_1")
    assert len((out / "my-task_1.jsonl").read_text(encoding="utf-8").splitlines()) == 1


def test_task_path_with_unusual_characters(tmp_path):
    yaml = pytest.importorskip("yaml")
    text = tmp_path / "t.txt"
    text.write_text("বাংলা", encoding="utf-8")
    folder = tmp_path / 'বাংলা "q" \\ 😀'
    out = write_perplexity_task([text], folder)
    spec = yaml.safe_load((out / "bangla_ppl.yaml").read_text(encoding="utf-8"))
    assert Path(spec["dataset_kwargs"]["data_files"]["test"]) == folder / "bangla_ppl.jsonl"


@pytest.mark.parametrize("case, expected", [
    ("missing", "not found"),
    ("empty", "no text"),
    ("folder", "is a folder; pass the text files in it"),
    ("binary", "binary"),
    ("latin1", "not UTF-8"),
    ("no_files", "no text files"),
    ("bad_name", "task name"),
    ("builtin_name", "one of lm-eval's own tasks"),  # was accepted: perplexity filed under a benchmark's name
    ("out_is_file", "not a folder"),
])
def test_write_perplexity_task_errors(tmp_path, case, expected):
    good = tmp_path / "good.txt"
    good.write_text("বাংলা ভাষা", encoding="utf-8")
    out, name, texts = tmp_path / "out", "bangla_ppl", [good]
    if case == "missing":
        texts = [good, tmp_path / "nope.txt"]
    elif case == "empty":
        (tmp_path / "e.txt").write_text(" \n\u200b\t\r\n", encoding="utf-8")  # empty once normalized
        texts = [good, tmp_path / "e.txt"]
    elif case == "folder":
        texts = [tmp_path]
    elif case == "binary":
        (tmp_path / "b.txt").write_bytes(b"ab\x00cd")
        texts = [tmp_path / "b.txt"]
    elif case == "latin1":
        (tmp_path / "l.txt").write_bytes("café".encode("latin-1"))
        texts = [tmp_path / "l.txt"]
    elif case == "no_files":
        texts = []
    elif case == "bad_name":
        name = "../evil"
    elif case == "builtin_name":
        pytest.importorskip("lm_eval")
        name = "belebele_ben_Beng"
    elif case == "out_is_file":
        out = good
    with pytest.raises(UserError, match=expected) as info:
        write_perplexity_task(texts, out, name=name)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_task_folder_is_shared_with_tasks_only(tmp_path):
    """lm-eval reads every YAML in the folder, so other tasks may share it; a folder of other
    files (a data folder, the user's texts) or a task file of the same name that is not ours is
    refused, untouched; our own earlier task of that name is replaced."""
    good = tmp_path / "good.txt"
    good.write_text("বাংলা ভাষা", encoding="utf-8")
    shared = write_perplexity_task([good], tmp_path / "tasks", name="first")
    write_perplexity_task([good], shared, name="second")
    write_perplexity_task([good], shared, name="first")  # ours, again: replaced
    assert sorted(p.name for p in shared.iterdir()) == ["first.jsonl", "first.yaml", "second.jsonl", "second.yaml"]
    for folder, content in [("texts", {"book.txt": "বই"}), ("mine", {"bangla_ppl.yaml": "task: mine\n"}),
                            ("data_only", {"bangla_ppl.jsonl": "{}\n"})]:
        out = tmp_path / folder
        out.mkdir()
        for name, text in content.items():
            (out / name).write_text(text, encoding="utf-8")
        with pytest.raises(UserError, match="not a banglaslm lm-eval task folder"):
            write_perplexity_task([good], out)
        assert {p.name: p.read_text(encoding="utf-8") for p in out.iterdir()} == content
