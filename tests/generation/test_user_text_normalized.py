"""Text a user types is normalized wherever it is compared with the model's text: a stop string
written with letter + nukta, or with a vowel sign in two parts, stops exactly where the
precomposed one does, in the library, the CLI and the server."""

import json
import subprocess
import sys
import unicodedata

import pytest
from fastapi.testclient import TestClient

from banglaslm.config import SamplingParams
from banglaslm.errors import UserError
from banglaslm.generation.engine import Engine
from banglaslm.runfolder import load_model
from banglaslm.server.app import create_app
from banglaslm.text import normalize, normalize_fragment, normalize_prompt

PROMPT = "আমার সোনার"


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_model(trained_run)


def sampling(seed: int, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=1.0, max_new_tokens=80, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def stop_cases(loaded):
    """(seed, precomposed stop, the same stop typed decomposed, where the text must end) for
    every character of a sampled continuation that Unicode can also write in parts (ো, ৌ, ড়,
    ঢ়, য়), from the first seed whose continuation has one."""
    engine = Engine(loaded.model, loaded.tokenizer)
    for seed in range(200):
        text = engine.generate([PROMPT], sampling(seed))[0][0].text
        cases = [(seed, text[i - 2:i + 1], unicodedata.normalize("NFD", text[i - 2:i + 1]), text[:i - 2])
                 for i, ch in enumerate(text)
                 if i >= 2 and unicodedata.normalize("NFD", ch) != ch and text.find(text[i - 2:i + 1]) == i - 2
                 and all(unicodedata.category(c)[0] in "LM" for c in text[i - 2:i + 1])]  # letters and signs
        if cases:
            return cases
    pytest.fail("no sampled continuation holds a character Unicode can write in parts")


def test_fragments_keep_their_edges():
    assert normalize_fragment("\n") == "\n" and normalize("\n") == ""
    assert normalize_fragment(" য\u09bc ") == " \u09df "
    assert normalize_fragment("ব\u09c7\u09be\r\n") == "বো\n"


def test_a_prompt_keeps_its_final_line_break():
    """A prompt that ends its line asks for the next one; normalize() stripped the line break, so
    the model went on in the prompt's line."""
    assert normalize_prompt("  আমার সোনার \n") == "আমার সোনার\n"
    assert normalize_prompt("শিরোনাম: নদী\r\n\r\n\r\n") == "শিরোনাম: নদী\n\n"
    assert normalize_prompt("আমার সোনার \t") == "আমার সোনার"
    assert normalize_prompt(" \n\u200b\n ") == ""


def test_the_engine_and_server_continue_after_the_prompts_line_break(loaded, trained_run):
    engine = Engine(loaded.model, loaded.tokenizer)
    for prompt in (PROMPT + "\n", PROMPT + "\n\n"):
        assert loaded.tokenizer.decode(engine.encode_prompt(prompt)[1:]) == prompt
    with TestClient(create_app(trained_run)) as client:
        body = {"prompt": PROMPT + " \n", "max_tokens": 0, "echo": True}
        assert client.post("/v1/completions", json=body).json()["choices"][0]["text"] == PROMPT + "\n"
    with pytest.raises(UserError, match="prompt is empty"):
        engine.encode_prompt("\n \n")


def test_library(loaded, stop_cases):
    engine = Engine(loaded.model, loaded.tokenizer)
    for seed, stop, typed, expected in stop_cases:
        for form in (stop, typed):
            out = engine.generate([PROMPT], sampling(seed, stop=[form]))[0][0]
            assert out.text == expected and out.finish_reason == "stop", (form, out.text)
        streamed = "".join(engine.stream(PROMPT, sampling(seed, stop=[typed])))
        assert streamed == expected
    with pytest.raises(UserError, match="empty once normalized"):
        engine.generate([PROMPT], SamplingParams(stop=["\u200b"]))


def test_cli(trained_run, stop_cases):
    """A prompt's trailing space, which the model never reads, was printed before a continuation
    that opens with its own space: a double space on the screen."""
    seed, stop, typed, expected = stop_cases[0]
    for prompt, stream in ((PROMPT, []), (PROMPT + " ", []), (PROMPT + " \t", ["--stream"])):
        r = subprocess.run([sys.executable, "-m", "banglaslm", "generate", str(trained_run), "--prompt", prompt,
                            "--temperature", "1.0", "--seed", str(seed), "--max-new-tokens", "80", "--stop", typed,
                            *stream], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        if prompt == PROMPT:
            assert r.stdout == PROMPT + expected + "\n"
        else:  # a new word (its first token opens with a space), after one space
            assert r.stdout.startswith(PROMPT + " ") and r.stdout[len(PROMPT) + 1] != " ", (prompt, stream, r.stdout)


def test_server(trained_run, stop_cases):
    seed, stop, typed, expected = stop_cases[0]
    with TestClient(create_app(trained_run)) as client:
        body = {"prompt": PROMPT, "max_tokens": 80, "temperature": 1.0, "seed": seed, "stop": [typed]}
        out = client.post("/v1/completions", json=body).json()
        assert out["choices"][0]["text"] == expected and out["choices"][0]["finish_reason"] == "stop"


def test_chat_messages_and_stops_typed_in_parts(trained_run):
    # a question and a system prompt typed with letter + nukta and two-part vowel signs are the
    # same conversation; a stop typed so in /v1/chat/completions stops where the precomposed one does
    def ask(client, messages, seed, stop=None):
        body = {"messages": messages, "max_tokens": 60, "temperature": 1.0, "seed": seed, **({"stop": stop} if stop else {})}
        return client.post("/v1/chat/completions", json=body).json()

    composed = [{"role": "system", "content": "তুমি বাংলায় উত্তর দাও।"}, {"role": "user", "content": "বড় নদীর কথা বলো"}]
    in_parts = [{k: unicodedata.normalize("NFD", v) for k, v in m.items()} for m in composed]
    assert in_parts != composed
    with TestClient(create_app(trained_run)) as client:
        for seed in range(50):
            a, b = ask(client, composed, seed), ask(client, in_parts, seed)
            assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"]
            text = a["choices"][0]["message"]["content"]
            assert b["choices"][0]["message"]["content"] == text
            at = next((i for i, ch in enumerate(text) if i >= 2 and unicodedata.normalize("NFD", ch) != ch), None)
            if at is not None:
                break
        assert at is not None, "no answer with a character Unicode writes in parts"
        stopped = ask(client, in_parts, seed, stop=[unicodedata.normalize("NFD", text[at - 2:at + 1])])
    choice = stopped["choices"][0]
    assert choice["message"]["content"] == text[:at - 2] and choice["finish_reason"] == "stop"


def test_stops_match_however_either_side_spelled_it():
    # The model, too, may write ো as ে + া and ড় as ড + ়: the match is up to canonical equivalence.
    from banglaslm.generation.engine import _find_stop, _stop_holdback

    composed, in_parts = "বোড়", "বে\u09be\u09a1\u09bc"
    for text in (f"আ{composed}ই", f"আ{in_parts}ই"):
        for stop in (composed, in_parts):
            assert _find_stop(text, [normalize_fragment(stop)], 0) == 1, (text, stop)
    assert _stop_holdback("আবে", [normalize_fragment(composed)]) == 1  # ে may still become ো
    assert _stop_holdback("আবি", [normalize_fragment(composed)]) == 3


def test_the_held_back_tail_is_the_earliest_that_may_grow_into_a_stop():
    """The holdback skips positions that cannot begin a stop (its cost grew with the square of a
    long stop's length, and four 1,000-character stops slowed every client): on text and stops
    drawn from Bangla letters, signs written whole and in parts, it must equal the plain search
    over every position."""
    import random

    from banglaslm.generation.engine import _spelled_out, _stop_holdback

    def plain(text, stops):
        longest = max(len(_spelled_out(s)) for s in stops)
        for i in range(max(0, len(text) - longest + 1), len(text)):
            if any(_spelled_out(s).startswith(_spelled_out(text[i:])) for s in stops):
                return i
        return len(text)

    alphabet = ["ব", "ে", "া", "ো", "ড", "়", "ড়", "্", "র", "\u200c", "।", " ", "\n"]
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choices(alphabet, k=rng.randint(1, 12)))
        stops = ["".join(rng.choices(alphabet, k=rng.randint(1, 5))) for _ in range(rng.randint(1, 3))]
        assert _stop_holdback(text, stops) == plain(text, stops), (text, stops)


def test_a_stop_string_has_a_length_limit():
    from banglaslm.config import MAX_STOP_CHARS

    SamplingParams(stop=["ক" * MAX_STOP_CHARS]).validate()
    with pytest.raises(UserError, match=f"^stop strings may be at most {MAX_STOP_CHARS} characters each, got one of 1,000"):
        SamplingParams(stop=["।", "ক" * 1000]).validate()


def test_cli_prompt_reads_a_typed_line_break_as_stop_does(trained_run, loaded):
    """`--prompt "শিরোনাম: নদী\\n"` reached the model as a backslash and an n (--stop reads them)."""
    r = subprocess.run([sys.executable, "-m", "banglaslm", "generate", str(trained_run), "--prompt", PROMPT + "\\n",
                        "--greedy", "--max-new-tokens", "4", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt"] == PROMPT + "\n"
    engine = Engine(loaded.model, loaded.tokenizer)
    assert out["text"] == engine.generate([PROMPT + "\n"], SamplingParams(greedy=True, max_new_tokens=4))[0][0].text
