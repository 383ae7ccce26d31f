"""Every request field does what OpenAI's does or is refused with a 400 naming it: `echo` with
prompt logprobs (what lm-evaluation-harness sends for every log-likelihood task), token-id and
multiple prompts, `logit_bias`; no 500 and no stream that ends without a word; a client that
goes away stops its generation. Through the real HTTP stack and the `openai` client."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from live_server import live

from banglaslm.evaluation import perplexity
from banglaslm.evaluation.perplexity import window_logprobs
from banglaslm.generation.batching import Batch
from banglaslm.server.app import create_app
from banglaslm.server.schemas import ServerLimits
from banglaslm.server.worker import GenerationWorker, Job, Steps, Stopped

MODEL = "m"
PROMPT = "আমার সোনার বাংলা, আমি তোমায় ভালোবাসি।"


@pytest.fixture(scope="module")
def app(trained_run):
    return create_app(trained_run, model_name=MODEL)


@pytest.fixture(scope="module")
def url(app):
    with live(app) as base:
        yield base


@pytest.fixture(scope="module")
def oai(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def model_logprobs(app, context: list[int]) -> list[float]:
    return [lp for window in window_logprobs(app.state.service.engine.model, context) for lp, _ in window]


# ---- echo ------------------------------------------------------------------------------------
def test_echo_returns_the_prompt_and_its_logprobs(app, oai):
    engine = app.state.service.engine
    context = engine.encode_prompt(PROMPT)
    out = oai.completions.create(model=MODEL, prompt=PROMPT, echo=True, logprobs=1, max_tokens=1, temperature=0)
    choice = out.choices[0]
    as_read = engine.tokenizer.decode(context[1:])  # normalized (bn-1 writes য় as one code point)
    assert choice.text.startswith(as_read) and len(choice.text) > len(as_read)
    lp = choice.logprobs
    assert len(lp.tokens) == len(context) - 1 + 1  # every prompt token, then the new one
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing precedes it: null
    want = model_logprobs(app, context)
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(lp.token_logprobs[1:len(context) - 1], want[1:]))
    # the most likely token, and the prompt's own where it is another (OpenAI's "up to logprobs+1")
    assert all(len(top) in (1, 2) and top[token] == logprob
               for token, logprob, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]))
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[len(context) - 1] == len(as_read)


def test_scoring_a_long_prompt_lets_other_generations_go_on(app, client, monkeypatch):
    """Scoring an echoed prompt (lm-eval's log-likelihood requests) ran as one job on the model's
    thread: every other client's stream stood still until the whole prompt was scored. Now each
    window is a forward pass of its own, with decode steps of the running generations between."""
    import threading

    service = app.state.service
    model, log, scoring = service.engine.model, [], [False]
    step, windows, forward = service.worker.batch.step, perplexity._scored_windows, model.forward

    def logged_step():
        log.append("step")
        time.sleep(0.01)
        step()

    def logged_windows(*args, **kwargs):  # marks the forward passes that score
        inner = windows(*args, **kwargs)
        while True:
            scoring[0] = True
            try:
                window = next(inner)
            except StopIteration:
                return
            finally:
                scoring[0] = False
            yield window

    def logged_forward(*args, **kwargs):
        if scoring[0]:
            log.append("scoring pass")
        return forward(*args, **kwargs)
    monkeypatch.setattr(service.worker.batch, "step", logged_step)
    monkeypatch.setattr(perplexity, "_scored_windows", logged_windows)
    monkeypatch.setattr(model, "forward", logged_forward)
    eod = service.engine.tokenizer.eod_id
    long_run = {"model": MODEL, "prompt": PROMPT, "max_tokens": 300, "temperature": 0, "logit_bias": {str(eod): -100}}
    generating = threading.Thread(target=client.post, args=("/v1/completions",), kwargs={"json": long_run})
    generating.start()
    deadline = time.monotonic() + 60
    while "step" not in log and time.monotonic() < deadline:
        time.sleep(0.01)
    scored = client.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT * 12, "echo": True,
                                                   "logprobs": 1, "max_tokens": 0})
    generating.join()
    assert scored.status_code == 200
    passes = [i for i, what in enumerate(log) if what == "scoring pass"]
    assert len(passes) >= 4  # the prompt spans several windows, each a pass of its own
    assert "step" in log[passes[0]:passes[-1]], "no decode step ran while the prompt was scored"


def test_scoring_stops_when_its_request_is_out_of_time(trained_run):
    """The scoring of an echoed prompt heeds the request's time-out (it answered 200 long after)."""
    with TestClient(create_app(trained_run, model_name=MODEL, limits=ServerLimits(request_timeout_s=0.0))) as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "echo": True, "logprobs": 1,
                                             "max_tokens": 0})
        assert r.status_code == 408 and r.json()["error"]["code"] == "timeout"


def test_a_cancelled_steps_job_runs_no_further_piece(app):
    """A client that leaves stops its scoring before the next window (it ran to the end)."""
    import threading

    ran, answered = [], threading.Event()
    outcome = {}

    def pieces():
        while True:
            ran.append(1)
            yield

    job = Job(lambda job: Steps(pieces()), time.monotonic() + 60)
    worker = GenerationWorker(Batch(app.state.service.engine, capacity=1))  # not the app's batch
    worker.submit(job, lambda result, error: (outcome.update(error=error), answered.set()))
    deadline = time.monotonic() + 60
    while len(ran) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    job.cancel()
    assert answered.wait(10) and isinstance(outcome["error"], Stopped)
    count = len(ran)
    time.sleep(0.1)
    assert len(ran) == count


def test_max_tokens_zero_with_echo_scores_the_prompt_alone(app, oai):
    out = oai.completions.create(model=MODEL, prompt=PROMPT, echo=True, logprobs=0, max_tokens=0)
    choice = out.choices[0]
    engine = app.state.service.engine
    assert choice.text == engine.tokenizer.decode(engine.encode_prompt(PROMPT)[1:]) and out.usage.completion_tokens == 0
    assert len(choice.logprobs.tokens) == len(engine.encode_prompt(PROMPT)) - 1


def test_token_id_prompts_as_lm_eval_sends_them(app, oai):
    engine = app.state.service.engine
    ids = engine.encode_prompt(PROMPT)[1:]
    out = oai.completions.create(model=MODEL, prompt=[ids], echo=True, logprobs=1, max_tokens=1, temperature=0,
                                 seed=1234)
    lp = out.choices[0].logprobs
    want = model_logprobs(app, [engine.tokenizer.eod_id, *ids])
    assert lp.token_logprobs[0] is None
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(lp.token_logprobs[1:-1], want[1:]))
    # ids that begin with the end-of-document token (lm-eval's add_bos_token with the exported
    # tokenizer, whose BOS it is): not put first again, and the client's tokens echoed, all of them
    eod = engine.tokenizer.eod_id
    out = oai.completions.create(model=MODEL, prompt=[[eod, *ids]], echo=True, logprobs=1, max_tokens=0)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 1 and out.usage.prompt_tokens == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.tokens[0] == ""  # a control token shows no text
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(lp.token_logprobs[1:], want))


def test_lm_evaluation_harness_scores_through_the_server(app, url, trained_run, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from banglaslm.interop.hf_export import export_hf

    export = export_hf(trained_run, tmp_path / "hf")
    lm = LocalCompletionsAPI(base_url=url + "/v1/completions", model=MODEL, tokenizer=str(export),
                             tokenizer_backend="huggingface", max_retries=1)
    context, continuations = "আমার সোনার বাংলা,", [" আমি তোমায় ভালোবাসি।", " নদীর ধারে একটি গ্রাম।"]
    requests = [Instance("loglikelihood", {}, (context, c), i) for i, c in enumerate(continuations)]
    scores = [logprob for logprob, _ in lm.loglikelihood(requests)]
    engine = app.state.service.engine
    for score, continuation in zip(scores, continuations):
        ctx = engine.tokenizer.encode(context)  # normalized, as the exported HF tokenizer does too
        cont = engine.tokenizer.encode(context + continuation)[len(ctx):]
        want = model_logprobs(app, [engine.tokenizer.eod_id, *ctx, *cont])[len(ctx):]
        assert score != 0 and math.isclose(score, sum(want), rel_tol=1e-4), (score, sum(want))
    assert lm_eval.__version__


def test_echo_streams_the_prompt_first(client):
    body = {"model": MODEL, "prompt": PROMPT, "echo": True, "max_tokens": 4, "temperature": 0, "stream": True}
    events = sse(client.post("/v1/completions", json=body))
    engine = client.app.state.service.engine
    assert events[0]["choices"][0]["text"] == engine.tokenizer.decode(engine.encode_prompt(PROMPT)[1:])
    assert events[-1] == "[DONE]"
    plain = client.post("/v1/completions", json={**body, "stream": False}).json()["choices"][0]["text"]
    assert "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"]) == plain


# Prompts that normalization changes: spaces and CRLF, a tab, a zero-width space, a decomposed য়.
CHANGED = ["  আমি\r\nতুমি", "আমি\tতুমি", "আমি\u200bতুমি", "লায\u09bc গান"]


@pytest.mark.parametrize("prompt", CHANGED)
def test_echo_returns_the_prompt_as_read_so_the_offsets_index_it(app, client, prompt):
    """The echoed text is the prompt as the model read it (normalized), so that, as OpenAI's
    are, the tokens add up to the text and each text_offset points at its token: the raw
    prompt was echoed while its tokens and offsets were of the normalized one."""
    body = {"model": MODEL, "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 3, "temperature": 0}
    for stream in (False, True):
        r = client.post("/v1/completions", json={**body, "stream": stream})
        chunks = [e["choices"][0] for e in sse(r)[:-1] if e["choices"]] if stream else r.json()["choices"]
        text = "".join(c["text"] for c in chunks)
        tokens = [t for c in chunks if c["logprobs"] for t in c["logprobs"]["tokens"]]
        offsets = [o for c in chunks if c["logprobs"] for o in c["logprobs"]["text_offset"]]
        assert text == "".join(tokens), (text, tokens)
        assert all(text[o:].startswith(t) for o, t in zip(offsets, tokens)), (text, tokens, offsets)
        ids = app.state.service.engine.encode_prompt(prompt)[1:]
        assert text.startswith(app.state.service.engine.tokenizer.decode(ids))


def test_every_streamed_choice_ends_with_its_finish_reason_even_with_max_tokens_zero(client):
    body = {"model": MODEL, "prompt": ["আমি", "নদী"], "echo": True, "max_tokens": 0, "stream": True}
    finishes = {}
    for event in sse(client.post("/v1/completions", json=body))[:-1]:
        for c in event["choices"]:
            finishes.setdefault(c["index"], []).append(c["finish_reason"])
    assert finishes == {0: [None, "length"], 1: [None, "length"]}  # [None] each before: no chunk said it ended


def test_prompt_tokens_are_counted_as_the_client_counts_them(app, client):
    """usage and the prompt limit count the prompt's own tokens (as echo returns them), not the
    end-of-document token every context starts with: a 2-id prompt was counted 3."""
    ids = app.state.service.engine.encode_prompt(PROMPT)[1:]
    for prompt in (PROMPT, ids):
        out = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1}).json()
        assert out["usage"]["prompt_tokens"] == len(ids)


# ---- other fields ------------------------------------------------------------------------------
def test_several_prompts_in_one_request(oai):
    out = oai.completions.create(model=MODEL, prompt=["আমি", "নদী"], n=2, max_tokens=5, seed=3)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    alone = oai.completions.create(model=MODEL, prompt="নদী", n=2, max_tokens=5, seed=3)
    assert [c.text for c in out.choices[2:]] == [c.text for c in alone.choices]


def test_logit_bias_is_applied(app, oai):
    engine = app.state.service.engine
    plain = oai.completions.create(model=MODEL, prompt="আমি", max_tokens=3, temperature=0, logprobs=0)
    first = engine.tokenizer.encode(plain.choices[0].logprobs.tokens[0], normalized=True)
    banned = oai.completions.create(model=MODEL, prompt="আমি", max_tokens=3, temperature=0, logprobs=0,
                                    logit_bias={str(t): -100 for t in first})
    assert banned.choices[0].logprobs.tokens[0] != plain.choices[0].logprobs.tokens[0]
    forced = oai.completions.create(model=MODEL, prompt="আমি", max_tokens=3, temperature=0, logit_bias={"100": 100})
    assert engine.tokenizer.decode([100] * 3) == forced.choices[0].text


@pytest.mark.parametrize("path, extra, param", [
    ("completions", {"suffix": " শেষ"}, "suffix"),
    ("completions", {"best_of": 3}, "best_of"),
    ("completions", {"logit_bias": {"999999": 5}}, "logit_bias"),
    ("completions", {"logit_bias": {"5": 500}}, "logit_bias"),
    ("completions", {"logit_bias": {"9" * 5000: 1}}, "logit_bias"),  # past int()'s digit limit: it was a 500
    ("completions", {"logit_bias": {"0" * 30 + "7": 1, "18446744073709551617": 1}}, "logit_bias"),
    ("completions", {"stream_options": {"include_obfuscation": True}, "stream": True},
     "stream_options.include_obfuscation"),
    ("completions", {"frobnicate": 1}, "frobnicate"),
    ("chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ("chat/completions", {"store": True}, "store"),
    ("chat/completions", {"moderation": {}}, "moderation"),
    ("chat/completions", {"modalities": ["text", "audio"]}, "modalities"),
    ("chat/completions", {"reasoning_effort": "high"}, "reasoning_effort"),
    ("chat/completions", {"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ("chat/completions", {"presence_penalty": 2.5}, "presence_penalty"),
    # a tool conversation replayed: the tool's answer was told only which roles exist
    ("chat/completions", {"messages": [{"role": "user", "content": "আমি"},
                                       {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
                                       {"role": "tool", "content": "৪২", "tool_call_id": "c1"}]}, "messages.1"),
    ("chat/completions", {"messages": [{"role": "user", "content": "আমি"},
                                       {"role": "tool", "content": "৪২", "tool_call_id": "c1"}]}, "messages.1"),
    ("chat/completions", {"messages": [{"role": "function", "name": "f", "content": "৪২"}]}, "messages.0"),
    # a user or system message without its text was answered as if it were empty
    ("chat/completions", {"messages": [{"role": "user"}]}, "messages.0.content"),
    ("chat/completions", {"messages": [{"role": "system", "content": None}, {"role": "user", "content": "আমি"}]},
     "messages.0.content"),
])
def test_fields_we_cannot_honour_are_refused_by_name(client, path, extra, param):
    body = {"model": MODEL, "max_tokens": 3}
    body.update({"prompt": "আমি"} if path == "completions" else {"messages": [{"role": "user", "content": "আমি"}]})
    r = client.post(f"/v1/{path}", json={**body, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
    if param.startswith("messages.") and not param.endswith(".content"):
        assert "tool calls, their results" in r.json()["error"]["message"], r.text
    elif param.startswith("messages."):
        assert "message needs its text" in r.json()["error"]["message"], r.text


def test_fields_with_no_effect_are_accepted(client):
    base = {"model": MODEL, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "আমি"}]}
    plain = client.post("/v1/chat/completions", json=base).json()["choices"][0]["message"]["content"]
    extra = {"user": "u1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto", "best_of": None,
             "response_format": {"type": "text"}, "tool_choice": "none", "parallel_tool_calls": False,
             "prompt_cache_key": "k", "safety_identifier": "s", "modalities": ["text"],
             # sent by openai 3.x's chat.completions.create (they were "Extra inputs are not permitted")
             "prompt_cache_retention": "24h", "prompt_cache_options": {}, "moderation": None}
    extra.pop("best_of")
    r = client.post("/v1/chat/completions", json={**base, **extra})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == plain
    # An answer sent back as it came (with the null fields the openai client keeps) is accepted.
    answer = {"role": "assistant", "content": plain, "refusal": None, "annotations": [], "audio": None,
              "function_call": None, "tool_calls": None}
    r = client.post("/v1/chat/completions", json={**base, "messages": base["messages"] + [answer, base["messages"][0]]})
    assert r.status_code == 200, r.text


# ---- no 500, no silent stream ---------------------------------------------------------------
def sse(response) -> list:
    out = []
    for block in response.text.split("\n\n"):
        if block.strip():
            data = block.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.mark.parametrize("raw, param", [
    ('{"prompt": "\\ud800abc", "max_tokens": 2}', "prompt"),
    ('{"messages": [{"role": "user", "content": "\\udc80x"}], "max_tokens": 2}', "messages.0.content"),
    ('{"prompt": "আমি", "max_tokens": 2, "seed": 1180591620717411303424}', "seed"),
    ('{"prompt": "আমি", "max_tokens": 2, "temperature": NaN}', "temperature"),
    ('{"prompt": "আমি", "max_tokens": 2, "top_p": NaN}', "top_p"),
    ('{"prompt": "আমি", "max_tokens": 2, "stop": ["\\ud83d"]}', "stop"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_values_are_400_before_any_stream(client, raw, param, stream):
    body = raw[:-1] + f', "stream": {json.dumps(stream)}}}'
    for path in ("completions", "chat/completions"):
        if ("messages" in raw) != (path == "chat/completions"):
            continue
        r = client.post(f"/v1/{path}", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


def test_a_temperature_that_underflows_is_greedy(client):
    greedy = client.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 6, "temperature": 0}).json()
    tiny = client.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 6, "temperature": 1e-45}).json()
    assert tiny["choices"][0]["text"] == greedy["choices"][0]["text"]


def test_an_error_mid_stream_is_an_error_event_then_done(app, client, monkeypatch):
    batch = app.state.service.worker.batch
    real, calls = batch.step, {"n": 0}

    def failing():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        real()
    monkeypatch.setattr(batch, "step", failing)
    never_end = {str(app.state.service.engine.tokenizer.eod_id): -100}  # so the third step comes
    events = sse(client.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 50, "stream": True,
                                                      "logit_bias": never_end, "seed": 1}))
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "server_error"
    monkeypatch.undo()
    assert client.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 2}).status_code == 200


def test_the_cli_refuses_a_prompt_that_is_not_utf8(trained_run):
    r = subprocess.run([sys.executable, "-m", "banglaslm", "generate", str(trained_run), "--prompt", "\udcff\udcfe"],
                       capture_output=True, text=True, timeout=60, errors="surrogateescape")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--prompt is not valid text: it holds a lone surrogate" in r.stderr


# ---- clients that go away -----------------------------------------------------------------
def test_a_client_that_leaves_a_plain_request_stops_its_generation(app, url):
    batch = app.state.service.worker.batch
    body = json.dumps({"prompt": "আমি", "max_tokens": 1024, "n": 8, "temperature": 1.0}).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            deadline = time.monotonic() + 10
            while batch.idle:  # the generation has started
                assert time.monotonic() < deadline
                time.sleep(0.01)
        # the client is gone: its eight generations stop within a few checks
        deadline = time.monotonic() + 5
        while not batch.idle:
            assert time.monotonic() < deadline, "generations went on for a client that left"
            time.sleep(0.05)
    started = time.monotonic()
    r = httpx.post(url + "/v1/completions", json={"prompt": "আমি", "max_tokens": 4}, timeout=30)
    assert r.status_code == 200 and time.monotonic() - started < 5


def test_a_generation_past_the_time_out_is_not_retried_by_openai_clients(trained_run):
    """The openai client retries a 408 twice by default: the same too-long generation ran three times."""
    from banglaslm.server.schemas import ServerLimits

    seen = []
    app = create_app(trained_run, model_name=MODEL, limits=ServerLimits(request_timeout_s=0.0))

    @app.middleware("http")
    async def count(request, call_next):
        seen.append(request.url.path)
        return await call_next(request)

    with live(app) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=2, timeout=60)
        with pytest.raises(openai.APIStatusError) as caught:
            client.completions.create(model=MODEL, prompt="আমি", max_tokens=50)
    assert caught.value.status_code == 408 and caught.value.response.headers["x-should-retry"] == "false"
    assert seen == ["/v1/completions"]


def test_a_long_scoring_answer_is_laid_out_off_the_event_loop(client, monkeypatch):
    """Laying out 8 echoed prompts' logprobs (17 MB of JSON) on the event loop froze every other
    stream for 2 s: the choices and the JSON, and a streamed answer's echoed prompt, are now made
    in a thread, where no loop runs."""
    import asyncio

    from banglaslm.server import app as app_module
    from banglaslm.server.events import LogprobFormat
    from banglaslm.server.service import OpenAIService

    on_loop = []

    def watched(function):
        def wrapper(*args, **kwargs):
            try:
                asyncio.get_running_loop()
                on_loop.append(function.__name__)
            except RuntimeError:
                pass
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(OpenAIService, "_completion_choices", watched(OpenAIService._completion_choices))
    monkeypatch.setattr(app_module, "jsonable_encoder", watched(app_module.jsonable_encoder))
    monkeypatch.setattr(LogprobFormat, "prompt", watched(LogprobFormat.prompt))
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": ["আমার সোনার বাংলা"] * 2, "max_tokens": 0,
                                             "echo": True, "logprobs": 5})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2, r.text
    streamed = client.post("/v1/completions", json={"model": MODEL, "prompt": "আমার সোনার বাংলা", "max_tokens": 2,
                                                    "echo": True, "logprobs": 5, "stream": True})
    assert streamed.status_code == 200 and '"top_logprobs"' in streamed.text.split("\n\n")[0], streamed.text
    assert r.json()["choices"][0]["logprobs"]["top_logprobs"][1], r.text
    r = client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 3,
                                                  "messages": [{"role": "user", "content": "আমি"}]})
    assert r.status_code == 200 and on_loop == [], (on_loop, r.text)


def _completion_text(client, **body) -> tuple[str, dict]:
    """A completion's text, streamed or not, and the last choice object (with its logprobs)."""
    r = client.post("/v1/completions", json={"model": MODEL, **body})
    assert r.status_code == 200, r.text
    if not body.get("stream"):
        return r.json()["choices"][0]["text"], r.json()["choices"][0]
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["text"] for c in chunks if c["choices"]), chunks[-1]["choices"][0]


def test_a_prompt_ending_in_a_space_is_answered_with_a_new_word(app, client):
    """The server's batches keep the first token of such a prompt to one that opens a word, as
    the engine does (the trailing space is never read; the model went on with the last word).
    The answer continues the prompt as sent, which has the space: it began with a second one
    ("আমার সোনার " + " বাংলা"), and a stop " " matched that space and answered nothing."""
    tokenizer = app.state.service.engine.tokenizer
    word = tokenizer.encode("আমি এক")[-1]  # " এক": a bias makes every token this word with its space
    bare = tokenizer.decode([word]).strip()
    for stream in (False, True):
        text, _ = _completion_text(client, prompt="আমার সোনার ", max_tokens=2, temperature=0, stream=stream)
        assert text[:1].strip(), text  # a word, after the prompt's own space
        echoed, _ = _completion_text(client, prompt="আমার সোনার ", max_tokens=2, temperature=0, stream=stream,
                                     echo=True)
        assert echoed == "আমার সোনার " + text  # the echo is read without the space: the answer brings it
        stopped, choice = _completion_text(client, prompt="আমার সোনার ", max_tokens=8, temperature=0,
                                           stream=stream, stop=[" "], logprobs=1)
        assert stopped.startswith(text) and " " not in stopped  # greedy: the same word, up to a space
        if not stream:  # the tokens' texts join to the text; only the first lost its space
            assert "".join(choice["logprobs"]["tokens"]).startswith(stopped)
            assert choice["logprobs"]["text_offset"][0] == 0
        spaced, choice = _completion_text(client, prompt="আমার সোনার ", max_tokens=6, seed=3, stream=stream,
                                          logprobs=2, logit_bias={str(word): 100})
        lp = choice["logprobs"] if not stream else None
        assert spaced == " ".join([bare] * 6), spaced
        if lp is not None:
            assert lp["tokens"] == [bare] + [f" {bare}"] * 5 and "".join(lp["tokens"]) == spaced
            assert lp["text_offset"] == [0] + [len(bare) + i * (len(bare) + 1) for i in range(5)]


def test_a_stop_string_is_not_looked_for_in_the_whitespace_a_chat_answer_drops(app, client):
    """stop [" "] matched the space after "সহকারী:" that every answer begins with: the answer was
    empty, finish_reason stop. (A bias makes every token one word with its space: " X X X".)"""
    tokenizer = app.state.service.engine.tokenizer
    word = tokenizer.encode("আমি এক")[-1]
    assert tokenizer.token_bytes(word).startswith(b" ") and len(tokenizer.token_bytes(word)) > 1
    for stream in (False, True):
        r = client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "একটা গল্প বলো"}], "max_tokens": 12,
            "logit_bias": {str(word): 100}, "stop": [" "], "stream": stream})
        assert r.status_code == 200, r.text
        if stream:
            chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
            answer = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        else:
            answer = r.json()["choices"][0]["message"]["content"]
        assert answer == tokenizer.decode([word]).strip(), answer
