"""Fine-tuning end to end, as a user runs it: `banglaslm finetune` on conversations, then the
same question through `banglaslm chat`, the server's /v1/chat/completions, and the Hugging Face
export (`apply_chat_template` + `generate`); all three give the answer it was taught, and the
GGUF export carries the same template."""

from __future__ import annotations

import json
import subprocess
import sys

import gguf
import pytest
import torch
from conftest import ROOT, require_literature
from fastapi.testclient import TestClient

from banglaslm.chat_template import encode_chat, jinja_template
from banglaslm.cli import main
from banglaslm.data.conversations import split_conversations
from banglaslm.data.instructions import instruction_files
from banglaslm.runfolder import load_model
from banglaslm.server.app import create_app

DAYS = ["রবিবার", "সোমবার", "মঙ্গলবার", "বুধবার", "বৃহস্পতিবার", "শুক্রবার", "শনিবার"]
QUESTION = "সোমবারের পরের দিন কী বার?"
ANSWER = "মঙ্গলবার।"


@pytest.fixture(scope="module")
def chat_run(chat_base_run, tmp_path_factory):
    """The shared small run, fine-tuned through the CLI to answer 'the day after X'."""
    work = tmp_path_factory.mktemp("ft-e2e")
    rows = [{"messages": [{"role": "user", "content": f"{day}ের পরের দিন কী বার?"},
                          {"role": "assistant", "content": f"{DAYS[(i + 1) % 7]}।"}]} for i, day in enumerate(DAYS)]
    data = work / "days.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows * 8), encoding="utf-8")
    # Validation takes all copies of one day (copies never straddle the split): a seed whose held-out
    # day is not the one the tests ask about, so that it is trained on. The tests then ask the latest
    # checkpoint, which learned the days by heart: "best" is the one that guesses an unseen day best.
    seed = next(s for s in range(1000) if QUESTION not in [c[0]["content"] for c in split_conversations(
        [r["messages"] for r in rows * 8], 0.05, s)["val"]])
    out = work / "chat"
    assert main(["finetune", str(chat_base_run), "--data", str(data), "--out", str(out), "--max-iters", "150",
                 "--set", "train.learning_rate=1e-2", "--set", "finetune.val_fraction=0.05",
                 "--set", f"train.seed={seed}"]) == 0
    return out


def test_chat_answers_what_it_was_taught(chat_run):
    require_literature()  # its figures hold for models of the shared books, not the stand-in corpus
    done = subprocess.run([sys.executable, "-m", "banglaslm", "chat", str(chat_run), "--checkpoint", "latest"],
                          input=f"/greedy on\n{QUESTION}\n",
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert ANSWER in done.stdout, done.stdout
    assert "Traceback" not in done.stderr


def test_the_server_answers_the_same_and_stops_at_the_end_of_turn(chat_run):
    require_literature()  # its figures hold for models of the shared books, not the stand-in corpus
    with TestClient(create_app(chat_run, model_name="days", which="latest")) as client:
        reply = client.post("/v1/chat/completions", json={
            "model": "days", "temperature": 0, "max_tokens": 40,
            "messages": [{"role": "user", "content": QUESTION}]}).json()
    choice = reply["choices"][0]
    assert choice["message"]["content"].strip() == ANSWER
    assert choice["finish_reason"] == "stop"  # the model emitted its end-of-turn token


def test_the_hugging_face_export_renders_our_ids_and_gives_the_same_answer(chat_run, tmp_path):
    require_literature()  # its figures hold for models of the shared books, not the stand-in corpus
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    assert main(["export", str(chat_run), "--format", "hf", "--out", str(out), "--checkpoint", "latest"]) == 0
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ours = load_model(chat_run).tokenizer
    # every conversation of the embedded instruction set, with and without the answer prompt
    conversations = [json.loads(line)["messages"] for path in instruction_files()
                     for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(conversations) >= 300
    for messages in conversations:
        assert hf_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False) == \
            encode_chat(ours, messages, add_generation_prompt=False)[0]
        question = messages[:-1]
        assert hf_tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=True,
                                                return_dict=False) == encode_chat(ours, question)[0]
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = hf_tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=False)
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.shape[1]:]
    assert new[-1].item() == hf_tokenizer.eos_token_id  # it stopped at the end of its turn
    assert hf_tokenizer.decode(new, skip_special_tokens=True).strip() == ANSWER


def test_the_gguf_export_carries_the_template(chat_run, tmp_path):
    out = tmp_path / "chat.gguf"
    assert main(["export", str(chat_run), "--format", "gguf", "--out", str(out)]) == 0
    field = gguf.GGUFReader(out).fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode("utf-8") == jinja_template()
