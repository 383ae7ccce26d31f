"""`banglaslm lm-eval RUN_DIR`: lm-evaluation-harness on a run folder through our model adapter.

The tasks are lm-eval YAML files written here over tests/evaluation/data/bangla_mc.jsonl, 32
original Bangla multiple-choice questions written for this project (question, four choices,
the right one's index), and over two short texts for a perplexity task. Three checks:
- multiple choice: each choice's log-likelihood equals what lm-eval's own `hf` model gives on
  the Hugging Face export with its default arguments (the exported tokenizer puts the
  end-of-document token first, as our contexts have it), so the accuracies are equal;
- the same log-likelihoods equal `banglaslm eval`'s: eval(context + choice) - eval(context);
- rolling log-likelihoods equal `banglaslm eval --stride BLOCK_SIZE`, and generate_until
  gives `banglaslm generate`'s greedy text.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import hf_offline

from banglaslm.cli import main

QUESTIONS = Path(__file__).parent / "evaluation" / "data" / "bangla_mc.jsonl"
# Two float32 implementations of one function (ours and transformers'): rounding only
# (tests/evaluation/test_lm_eval.py has the argument). Measured: 9e-8 relative at worst; the
# control below (no end-of-document token before the question) moves 6e-5 on the tiny run.
TOLERANCE = 1e-6


def write_tasks(folder: Path, texts: list[Path]) -> Path:
    """bangla_mc (multiple choice), bangla_qa (the same questions, answered by generation) and
    bangla_ppl (two documents), in lm-eval's YAML format; the data by absolute path."""
    from banglaslm.evaluation.lm_eval_task import write_perplexity_task

    folder.mkdir(parents=True, exist_ok=True)
    data = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(QUESTIONS))}\ntest_split: test\n"
    prompt = 'doc_to_text: "প্রশ্ন: {{question}}\\nউত্তর:"\n'
    (folder / "bangla_mc.yaml").write_text(
        "task: bangla_mc\noutput_type: multiple_choice\n" + data + prompt
        + "doc_to_choice: \"{{choices}}\"\ndoc_to_target: answer\n"
        + "metric_list:\n  - metric: acc\n  - metric: acc_norm\n", encoding="utf-8")
    (folder / "bangla_qa.yaml").write_text(
        "task: bangla_qa\noutput_type: generate_until\n" + data + prompt
        + "doc_to_target: \"{{choices[answer]}}\"\n"
        + "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 12\n  do_sample: false\n"
        + "metric_list:\n  - metric: exact_match\n", encoding="utf-8")
    if texts:
        write_perplexity_task(texts, folder, name="bangla_ppl")
    return folder


@pytest.fixture(scope="module")
def lm_eval():
    return pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def task_folder(small_books, tmp_path_factory) -> Path:
    texts = []
    for book in small_books[:2]:
        texts.append(tmp_path_factory.mktemp("texts") / book.name)
        texts[-1].write_text(book.read_text(encoding="utf-8")[:1200], encoding="utf-8")
    return write_tasks(tmp_path_factory.mktemp("tasks"), texts)


@pytest.fixture(scope="module")
def ours(lm_eval, trained_run, task_folder, tmp_path_factory):
    from banglaslm.lm_eval_run import run_lm_eval

    with pytest.MonkeyPatch.context() as mp:
        hf_offline(mp, tmp_path_factory.mktemp("datasets_cache"))
        return run_lm_eval(trained_run, "bangla_mc,bangla_qa,bangla_ppl", include_path=str(task_folder),
                           log_samples=True)


def loglikelihoods(results: dict, task: str) -> list[list[float]]:
    """Per question (in dataset order), each choice's log-likelihood."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in samples]


def test_multiple_choice_matches_lm_eval_hf_on_the_export(lm_eval, ours, trained_run, task_folder, tmp_path):
    pytest.importorskip("accelerate", reason="lm-eval's hf model needs accelerate: pip install 'lm-eval[hf]'")
    from lm_eval.tasks import TaskManager

    from banglaslm.interop.hf_export import export_hf

    exported = export_hf(trained_run, tmp_path / "hf")

    def hf_scores(extra_args: str) -> dict:
        """lm-eval's own `hf` model on the export, on bangla_mc, offline."""
        with pytest.MonkeyPatch.context() as mp:
            hf_offline(mp, tmp_path / "datasets_cache")
            return lm_eval.simple_evaluate(
                model="hf", model_args=f"pretrained={exported},dtype=float32{extra_args}", tasks=["bangla_mc"],
                task_manager=TaskManager(include_path=str(task_folder), include_defaults=False),
                device="cpu", batch_size=8, log_samples=True, bootstrap_iters=0)

    theirs = hf_scores("")
    mine, hf = loglikelihoods(ours[0], "bangla_mc"), loglikelihoods(theirs, "bangla_mc")
    assert len(mine) == 32 and all(len(row) == 4 for row in mine)
    for a, b in zip(mine, hf):
        assert a == pytest.approx(b, rel=TOLERANCE)
    for metric in ("acc,none", "acc_norm,none"):
        assert ours[0]["results"]["bangla_mc"][metric] == theirs["results"]["bangla_mc"][metric]
    # The control: without the end-of-document token before each question, log-likelihoods
    # move by far more than the tolerance.
    plain = hf_scores(",add_bos_token=False")
    moved = max(abs(a - b) / abs(b) for row_a, row_b in zip(loglikelihoods(plain, "bangla_mc"), mine)
                for a, b in zip(row_a, row_b))
    assert moved > 10 * TOLERANCE


def test_multiple_choice_loglikelihoods_are_banglaslm_evals(ours, trained_run):
    from banglaslm.evaluation.perplexity import evaluate_text
    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run)

    def nats(text: str) -> float:
        r = evaluate_text(loaded, text, stride=loaded.config.model.block_size)
        return r.loss * r.tokens

    block, checked = loaded.config.model.block_size, 0
    for sample in ours[0]["samples"]["bangla_mc"]:
        context = f"প্রশ্ন: {sample['doc']['question']}\nউত্তর:"
        whole = [f"{context} {choice}" for choice in sample["doc"]["choices"]]
        if max(len(loaded.tokenizer.encode(text)) for text in whole) > block:
            continue  # lm-eval cuts the oldest tokens; one eval window does not
        for text, resp in zip(whole, sample["resps"]):
            # A difference of two float32 sums of ~40 nats (ulp 4e-6 each), from padded and
            # unpadded batches: 1e-4 absolute; measured up to 1.3e-5.
            assert float(resp[0][0]) == pytest.approx(nats(context) - nats(text), abs=1e-4)
        checked += 1
    assert checked >= 4


def test_rolling_and_generation_are_banglaslm_eval_and_generate(ours, trained_run):
    from banglaslm.config import SamplingParams
    from banglaslm.evaluation.perplexity import evaluate_text
    from banglaslm.generation.engine import Engine
    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run)
    for sample in ours[0]["samples"]["bangla_ppl"]:
        r = evaluate_text(loaded, sample["doc"]["text"], stride=loaded.config.model.block_size)
        assert -float(sample["resps"][0][0]) == pytest.approx(r.loss * r.tokens, rel=TOLERANCE)
    engine = Engine(loaded.model, loaded.tokenizer)
    samples = sorted(ours[0]["samples"]["bangla_qa"], key=lambda s: s["doc_id"])
    prompts = [f"প্রশ্ন: {s['doc']['question']}\nউত্তর:" for s in samples[:6]]
    params = SamplingParams(greedy=True, max_new_tokens=12, stop=["\n"])
    expected = [c[0].text for c in engine.generate(prompts, params)]
    assert [s["resps"][0][0] for s in samples[:6]] == expected
    assert any(text.strip() for text in expected)  # the check compares generated text, not blanks


def test_results_file_beside_the_run(ours, trained_run):
    results, path = ours
    assert path.parent == trained_run / "lm_eval" and path.is_file()
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["results"]["bangla_mc"]["acc,none"] == results["results"]["bangla_mc"]["acc,none"]
    assert saved["banglaslm"]["checkpoint"] == "best.safetensors" and "samples" not in saved
    # int8 weights score a little differently: the file says how it was scored (it did not)
    assert {k: saved["banglaslm"][k] for k in ("quantize", "device", "batch_size")} == \
        {"quantize": "none", "device": "cpu", "batch_size": 16}


def test_command_line(lm_eval, trained_run, task_folder, tmp_path, capfd, monkeypatch):
    hf_offline(monkeypatch, tmp_path / "datasets_cache")
    monkeypatch.chdir(tmp_path)  # outside any git repository, as a user's folder often is
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    before = set((trained_run / "lm_eval").glob("*.json")) if (trained_run / "lm_eval").is_dir() else set()
    assert main(["lm-eval", str(trained_run), "--tasks", "bangla_mc", "--include-path", str(task_folder),
                 "--limit", "4", "--checkpoint", "latest"]) == 0
    out, err = capfd.readouterr()
    assert "bangla_mc" in out and "acc" in out
    assert "fatal:" not in err  # lm-eval asks git for a commit hash and git complained outside a repository
    (new,) = set((trained_run / "lm_eval").glob("*.json")) - before
    saved = json.loads(new.read_text(encoding="utf-8"))
    assert saved["banglaslm"]["checkpoint"] == "latest.safetensors"
    assert saved["n-samples"]["bangla_mc"]["effective"] == 4


@pytest.mark.parametrize("case, expected", [
    ("unknown_task", "no task named 'no_such_task'"),
    ("include_not_folder", "--include-path is not a folder"),
    ("bad_limit", "--limit must be at least 1"),
    ("no_lm_eval", "pip install 'banglaslm[lm-eval]'"),
    ("no_run", "not a banglaslm run folder"),
    ("blank_choice", "answer choice that is empty once normalized"),
    ("bad_output_type", "lm-eval could not run bad_task: ValueError"),
    ("answer_out_of_range", "lm-eval could not run bad_task: IndexError"),
    ("out_not_writable", "not writable"),
    ("out_a_file", "is a file; the results are written into a folder"),  # it was found after every request ran
])
def test_errors_are_one_line(trained_run, task_folder, tmp_path, capsys, monkeypatch, case, expected):
    hf_offline(monkeypatch, tmp_path / "datasets_cache")
    args = ["lm-eval", str(trained_run), "--tasks", "bangla_mc", "--include-path", str(task_folder)]
    if case == "unknown_task":
        args[3] = "bangla_mc,no_such_task"
    elif case == "include_not_folder":
        args[5] = str(tmp_path / "missing")
    elif case == "bad_limit":
        args += ["--limit", "0"]
    elif case == "no_lm_eval":
        monkeypatch.setitem(sys.modules, "lm_eval", None)
    elif case == "no_run":
        args[1] = str(tmp_path)
    elif case == "out_not_writable":
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        args += ["--out", str(locked / "results")]
    elif case == "out_a_file":
        (tmp_path / "results.txt").write_text("", encoding="utf-8")
        args += ["--out", str(tmp_path / "results.txt")]
        monkeypatch.setattr("banglaslm.lm_eval_run.load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    elif case in ("blank_choice", "bad_output_type", "answer_out_of_range"):
        row = {"question": "সপ্তাহে কয়টি দিন?", "choices": ["সাত", "পাঁচ"], "answer": 0}
        if case == "blank_choice":
            row["choices"] = ["সাত", " \u200c "]  # invisible once normalized
        if case == "answer_out_of_range":
            row["answer"] = 5
        bad = tmp_path / "bad"
        write_tasks(bad, [])
        (bad / "rows.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
        spec = (bad / "bangla_mc.yaml").read_text(encoding="utf-8").replace("task: bangla_mc", "task: bad_task")
        spec = spec.replace(json.dumps(str(QUESTIONS)), json.dumps(str(bad / "rows.jsonl")))
        if case == "bad_output_type":
            spec = spec.replace("output_type: multiple_choice", "output_type: multiple_choise")
        (bad / "bangla_mc.yaml").unlink()
        (bad / "bad_task.yaml").write_text(spec, encoding="utf-8")
        args[3], args[5] = "bad_task", str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    # One line of error, after lm-eval's own progress output (datasets' bars) where it got that far.
    assert "Traceback" not in err and expected in err.splitlines()[-1], err


def test_generate_until_keeps_a_contexts_final_line_break(lm_eval, trained_run):
    """A task whose context ends its line ("...\\nউত্তর:\\n") is continued as `banglaslm generate`
    continues that prompt: from the next line (the line break was stripped)."""
    from types import SimpleNamespace

    from banglaslm.config import SamplingParams
    from banglaslm.generation.engine import Engine
    from banglaslm.lm_eval_model import BanglaslmLM
    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run)
    contexts = ["প্রশ্ন: নদীর নাম কী?\nউত্তর:\n", "প্রশ্ন: নদীর নাম কী?\nউত্তর:"]
    kwargs = {"until": ["।"], "max_gen_toks": 12, "do_sample": False}
    lm = BanglaslmLM(loaded)
    got = lm.generate_until([SimpleNamespace(args=(c, kwargs)) for c in contexts])
    params = SamplingParams(greedy=True, max_new_tokens=12, stop=["।"])
    assert got == [c[0].text for c in Engine(loaded.model, loaded.tokenizer).generate(contexts, params)]
    assert [loaded.tokenizer.decode(lm._prompt_ids(c)[1:]) for c in contexts] == contexts
