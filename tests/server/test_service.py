"""The OpenAI-compatible server: in-process (TestClient) and over real HTTP with the official
`openai` client against uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from conftest import require_literature
from fastapi.testclient import TestClient
from live_server import live

from banglaslm.chat_template import chat_stops, encode_chat
from banglaslm.server.app import create_app
from banglaslm.server.schemas import ServerLimits

KEY = "test-key"
MODEL = "tiny-bn"


@pytest.fixture(scope="module")
def app(trained_run):
    return create_app(trained_run, model_name=MODEL, limits=ServerLimits(max_body_bytes=20_000))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def sse_events(response) -> list:
    """The JSON payloads of a server-sent-event body, and '[DONE]' last."""
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_openai_error(response, status: int):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# ---- in-process ----------------------------------------------------------------------------

def test_health_and_models(client):
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    block = client.app.state.service.engine.model.config.block_size  # what a client must fit its context into
    assert [m["max_model_len"] for m in models["data"]] == [block] and block > 0


def test_model_id_defaults_to_run_folder_name(trained_run):
    with TestClient(create_app(trained_run)) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == trained_run.name


def test_completion_shape_and_stream_equals_plain(client):
    body = {"model": MODEL, "prompt": "একদিন সকালে", "max_tokens": 24, "temperature": 0.9, "seed": 7}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion" and out["model"] == MODEL and out["id"].startswith("cmpl-")
    assert isinstance(out["created"], int)
    [choice] = out["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in {"stop", "length"}
    u = out["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["prompt_tokens"] > 0
    assert 0 < u["completion_tokens"] <= 24 or choice["finish_reason"] == "stop"

    s = client.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
    events = sse_events(s)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == choice["text"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == u


def test_n_samples_stop_and_greedy(client):
    body = {"prompt": ["আমি"], "max_tokens": 12, "n": 3, "seed": 3, "stop": "।"}
    out = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert all("।" not in c["text"] for c in out["choices"])
    streamed = sse_events(client.post("/v1/completions", json={**body, "stream": True}))
    for i, c in enumerate(out["choices"]):
        assert "".join(e["choices"][0]["text"] for e in streamed[:-1] if e["choices"][0]["index"] == i) == c["text"]
    greedy = [client.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 10, "temperature": 0}).json()
              for _ in range(2)]
    assert greedy[0]["choices"][0]["text"] == greedy[1]["choices"][0]["text"]


def test_chat_completion_both_ways(client):
    messages = [{"role": "system", "content": "তুমি সাহায্য করো।"}, {"role": "user", "content": "তোমার নাম কী?"}]
    body = {"model": MODEL, "messages": messages, "max_tokens": 30, "seed": 11}
    out = client.post("/v1/chat/completions", json=body).json()
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    [choice] = out["choices"]
    assert choice["message"]["role"] == "assistant"
    answer = choice["message"]["content"]
    assert answer == answer.lstrip()
    assert not any(s in answer for s in chat_stops())
    prompt_ids, _ = encode_chat(client.app.state.service.engine.tokenizer, messages)
    assert out["usage"]["prompt_tokens"] == len(prompt_ids) - 1  # the leading end-of-document token is not counted

    events = sse_events(client.post("/v1/chat/completions", json={**body, "stream": True}))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == answer


@pytest.mark.parametrize("body, param", [
    ({"prompt": "আমি", "temperature": "hot"}, "temperature"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "আমি", "max_tokens": 2.5}, "max_tokens"),
    ({"prompt": "আমি", "stream": "yes"}, "stream"),
    ({"prompt": "আমি", "temperature": 2.5}, "temperature"),
    ({"prompt": "আমি", "top_p": 1.5}, "top_p"),
    ({"prompt": "আমি", "max_tokens": 5000}, "max_tokens"),
    ({"prompt": "আমি", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "আমি", "n": 9}, "n"),
    ({"prompt": "আমি", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "আমি", "top_k": 0}, "top_k"),
    ({"prompt": "আমি", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": []}, "prompt"),  # (a list of several prompts is served: test_echo_and_fields.py)
    ({"prompt": "   "}, "prompt"),
    ({}, "prompt"),
])
def test_invalid_completion_requests_are_400(client, body, param):
    error = assert_openai_error(client.post("/v1/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].split(".")[0] == param


@pytest.mark.parametrize("body", [
    {"messages": []},
    {"messages": [{"role": "robot", "content": "hi"}]},
    {"messages": [{"role": "user", "content": 3}]},
    {"messages": "hi"},
    {"messages": [{"role": "user", "content": "hi"}], "top_p": -0.1},
    {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5000},
    # both limits, one out of range or the two different: one of them was silently ignored
    {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "max_completion_tokens": 5000},
    {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "max_completion_tokens": 5},
])
def test_invalid_chat_requests_are_400(client, body):
    error = assert_openai_error(client.post("/v1/chat/completions", json=body), 400)
    if "max_completion_tokens" in body:
        assert error["param"] == "max_completion_tokens", error


def test_max_tokens_and_max_completion_tokens_that_agree_are_one_limit(client):
    for body in ({"max_tokens": 3}, {"max_completion_tokens": 3}, {"max_tokens": 3, "max_completion_tokens": 3}):
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                      "temperature": 0, **body})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3, body


def test_malformed_json_unknown_model_and_routes(client):
    r = client.post("/v1/completions", content=b'{"prompt": "x",', headers={"content-type": "application/json"})
    assert assert_openai_error(r, 400)["code"] == "invalid_json"
    error = assert_openai_error(client.post("/v1/completions", content=b"[1, 2]",
                                            headers={"content-type": "application/json"}), 400)
    assert "JSON object" in error["message"]
    form = assert_openai_error(client.post("/v1/completions", content=b'{"prompt": "x"}',  # curl -d's default type
                                           headers={"content-type": "application/x-www-form-urlencoded"}), 400)
    assert form["code"] == "invalid_content_type" and "application/x-www-form-urlencoded" in form["message"]
    error = assert_openai_error(client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}), 404)
    assert_openai_error(client.get("/v1/models/gpt-4"), 404)
    error = assert_openai_error(client.get("/v1/nothing"), 404)
    assert error["type"] == "invalid_request_error" and "GET /v1/nothing is not a route" in error["message"]
    wrong_method = client.get("/v1/completions")
    assert "method is not allowed" in assert_openai_error(wrong_method, 405)["message"]
    assert wrong_method.headers["allow"] == "POST"  # HTTP requires it with a 405


@pytest.mark.parametrize("body, code", [
    (b'{"prompt": "\xff\xfe"}', "invalid_json"),   # not UTF-8: FastAPI's "error parsing the body", code null
    (b"", "invalid_type"),                         # empty: "Field required" naming no field
    (b"null", "invalid_type"),
])
def test_a_body_that_is_not_a_json_object_says_so(client, body, code):
    error = assert_openai_error(client.post("/v1/completions", content=body,
                                            headers={"content-type": "application/json"}), 400)
    assert error["code"] == code and "JSON" in error["message"], error


@pytest.mark.parametrize("path, body, param, shapes", [
    ("completions", {"prompt": [1.0, 2.0]}, "prompt", "text, a list of texts, token ids"),
    ("completions", {"prompt": ["a", [1, 2]]}, "prompt", "text, a list of texts, token ids"),
    ("completions", {"prompt": "আমি", "stop": [1]}, "stop", "text or a list of texts"),
    ("chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages.0.content",
     "text or a list of content parts"),
    ("completions", {"prompt": "আমি", "str": 1}, "str", "str: Extra inputs are not permitted"),  # not a union's tag
    ("completions", {"prompt": "আমি", "logit_bias": {"int": "abc"}}, "logit_bias.int", "logit_bias.int: Input should be"),
])
def test_a_field_of_several_shapes_is_named_with_them(client, path, body, param, shapes):
    """Token ids given as floats were answered 'prompt.str: Input should be a valid string', naming a
    parameter that does not exist (pydantic's name for one member of the union)."""
    error = assert_openai_error(client.post(f"/v1/{path}", json=body), 400)
    said = shapes if shapes.startswith(param + ":") else f"{param} must be {shapes}"
    assert error["param"] == param and error["message"].startswith(said), error


@pytest.mark.parametrize("key", [" 5", "5 ", "৫", "٥", "+5", "-1", "5.0"])
def test_logit_bias_keys_are_ascii_token_ids(client, key):
    """int() read " 5", "৫" (a Bangla digit) and "٥" as token 5."""
    error = assert_openai_error(client.post("/v1/completions", json={"prompt": "আমি", "logit_bias": {key: 1}}), 400)
    assert error["param"] == "logit_bias" and repr(key) in error["message"]


def test_head_answers_where_get_does(client):
    for path in ("/health", "/", "/v1/models", f"/v1/models/{MODEL}"):
        assert client.head(path).status_code == 200, path


def test_oversized_body_is_413_and_server_still_answers(client):
    big = {"prompt": "ক" * 30_000, "max_tokens": 5}
    assert assert_openai_error(client.post("/v1/completions", json=big), 413)["code"] == "request_too_large"

    def chunks():  # no Content-Length: the body is counted as it arrives
        data = json.dumps(big).encode()
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]
    assert_openai_error(client.post("/v1/completions", content=chunks(),
                                    headers={"content-type": "application/json"}), 413)
    r = client.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 5})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in {"stop", "length"}


def test_prompt_token_limit(trained_run):
    with TestClient(create_app(trained_run, limits=ServerLimits(max_prompt_tokens=5))) as c:
        error = assert_openai_error(c.post("/v1/completions", json={"prompt": "আমি বাংলায় গান গাই " * 3}), 400)
        assert error["code"] == "context_length_exceeded"
        assert c.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 3}).status_code == 200
        at_limit = c.post("/v1/completions", json={"prompt": [5] * 5, "max_tokens": 1})
        assert at_limit.json()["usage"]["prompt_tokens"] == 5  # the limit and usage count alike
        assert assert_openai_error(c.post("/v1/completions", json={"prompt": [5] * 6}), 400)["message"] == \
            "the prompt has 6 tokens; the limit is 5"


def test_a_prompt_too_long_for_any_tokens_is_refused_before_it_is_read(trained_run, monkeypatch):
    """Normalizing and encoding a megabyte held the GIL all the while, stalling every
    stream: a prompt longer than the limit's tokens could hold is refused unread."""
    with TestClient(create_app(trained_run, limits=ServerLimits(max_prompt_tokens=5))) as c:
        service = c.app.state.service
        read = []
        monkeypatch.setattr(service.engine, "encode_prompt", lambda text: read.append(text))
        too_long = "আ" * (service.max_prompt_chars + 1)
        for path, body in (("/v1/completions", {"prompt": too_long}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": too_long}]})):
            error = assert_openai_error(c.post(path, json=body), 400)
            assert error["code"] == "context_length_exceeded" and "characters" in error["message"]
        assert read == []


def test_timeout_is_408_then_the_server_still_answers(trained_run):
    with TestClient(create_app(trained_run, limits=ServerLimits(request_timeout_s=0.0))) as c:
        error = assert_openai_error(c.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 50}), 408)
        assert error["code"] == "timeout"
        events = sse_events(c.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 50, "stream": True}))
        assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    with TestClient(create_app(trained_run, limits=ServerLimits(request_timeout_s=60))) as c:
        assert c.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 5}).status_code == 200


def test_requests_after_shutdown_began_are_503(trained_run):
    with TestClient(create_app(trained_run)) as c:
        c.app.state.service.close()  # what a signal does (run._stopping_server)
        for body in ({"prompt": "আমি", "max_tokens": 5}, {"prompt": "আমি", "max_tokens": 5, "stream": True}):
            assert assert_openai_error(c.post("/v1/completions", json=body), 503)["code"] == "server_shutdown"


def test_a_failing_step_fails_its_requests_and_the_server_goes_on(trained_run):
    app = create_app(trained_run)
    batch = app.state.service.worker.batch

    def broken():
        del batch.step  # fails once, then the class's own step again
        raise RuntimeError("a bug in a decode step")
    batch.step = broken
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 20, "temperature": 0}).status_code == 500
        assert batch.idle and len(batch.free) == batch.capacity  # nothing stuck, every slot free
        r = c.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0


def test_bearer_key(trained_run):
    with TestClient(create_app(trained_run, api_key=KEY)) as c:
        error = assert_openai_error(c.get("/v1/models"), 401)
        assert error["type"] == "authentication_error"
        assert_openai_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_openai_error(c.post("/v1/completions", json={"prompt": "x"}), 401)
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.get("/health").status_code == 200


def test_playground_page(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "Noto Sans Bengali" in page and "/v1/completions" in page and "tokens/s" in page
    assert "logprobs" in page  # the candidates view reads the streamed logprobs
    for attr in ("src=", "href=", "@import", "url("):
        assert attr not in page  # everything is inline: no requests outside this server
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/favicon.ico").status_code == 204  # a browser asks for it: none, and no 404 logged


def token_bytes(token: str) -> bytes:
    if token.startswith("bytes:"):
        return bytes(int(h, 16) for h in token[len("bytes:"):].split("\\x")[1:])
    return token.encode()


def test_completion_logprobs_plain_and_streamed(client):
    require_literature()  # its figures hold for models of the shared books, not the stand-in corpus
    body = {"prompt": "একদিন সকালে", "max_tokens": 16, "temperature": 0.9, "top_k": 30, "seed": 5, "logprobs": 4}
    [choice] = client.post("/v1/completions", json=body).json()["choices"]
    lp = choice["logprobs"]
    n = len(lp["tokens"])
    assert n > 0 and len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    # The tokens spell the text (the text may stop before a stop string / trailing marks).
    spelled = b"".join(token_bytes(t) for t in lp["tokens"]).decode("utf-8", errors="replace")
    assert spelled.startswith(choice["text"].rstrip()) or choice["text"].startswith(spelled[:len(choice["text"])])
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
    for token, chosen, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        # the 4 most likely, and the sampled token where it is not among them (OpenAI's "up to logprobs+1")
        assert chosen <= 0 and top[token] == chosen and len(top) in (4, 5)
        assert max(top.values()) >= chosen - 1e-6  # the best alternative is at least as likely
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-5
    # Without logprobs the same seed gives the same text: asking changes nothing drawn.
    plain = client.post("/v1/completions", json={**body, "logprobs": None}).json()["choices"][0]
    assert plain["text"] == choice["text"] and plain["logprobs"] is None

    events = sse_events(client.post("/v1/completions", json={**body, "stream": True}))[:-1]
    streamed = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    position = 0
    for e in events:
        c = e["choices"][0]
        for key in streamed:
            streamed[key] += (c["logprobs"] or {}).get(key, [])
        if c["text"]:
            # A piece comes with the tokens whose text starts inside it (what a click shows); a
            # piece may have none when a token's text runs on from the piece before.
            offsets = (c["logprobs"] or {}).get("text_offset", [])
            assert all(position <= o < position + len(c["text"]) for o in offsets), (position, c)
            position += len(c["text"])
    assert streamed["tokens"] == lp["tokens"] and streamed["text_offset"] == lp["text_offset"]
    assert streamed["token_logprobs"] == pytest.approx(lp["token_logprobs"], abs=1e-6)
    for error_body in ({**body, "logprobs": 21}, {**body, "logprobs": -1}):
        assert_openai_error(client.post("/v1/completions", json=error_body), 400)


def stop_at_token(spelled: list[bytes], after: int) -> tuple[int, str]:
    """(i, stop): a stop string made of whole tokens i and i + 1 (each a whole character or more,
    the pair's first appearance, at or after token `after`), from a continuation's token bytes."""
    starts = [len(b"".join(spelled[:j]).decode(errors="ignore")) for j in range(len(spelled) + 1)]
    text = b"".join(spelled).decode(errors="ignore")
    for i in range(after, len(spelled) - 2):
        stop = text[starts[i]:starts[i + 2]]
        if starts[i] < starts[i + 1] < starts[i + 2] and stop.strip() == stop and text.find(stop) == starts[i]:
            return i, stop
    raise AssertionError(f"no stop string to make from {text!r}")


def test_logprobs_end_with_the_text_when_a_stop_string_cuts_it(client):
    """A stop string's tokens are sampled (usage counts them) but, like their text, they are not
    the answer: the logprobs hold the tokens whose text begins in it, plain and streamed (they
    held the stop string's tokens too, so the tokens spelled more than the text)."""
    body = {"prompt": "একদিন সকালে", "max_tokens": 24, "temperature": 0.9, "seed": 5, "logprobs": 2}
    free = client.post("/v1/completions", json=body).json()["choices"][0]
    i, stop = stop_at_token([token_bytes(t) for t in free["logprobs"]["tokens"]], after=4)
    out = client.post("/v1/completions", json={**body, "stop": stop}).json()
    [choice] = out["choices"]
    assert choice["text"] == free["text"][:free["text"].find(stop)] and choice["finish_reason"] == "stop"
    assert choice["logprobs"]["tokens"] == free["logprobs"]["tokens"][:i]  # the stop string's two left out
    assert out["usage"]["completion_tokens"] == i + 2  # though they were sampled
    events = sse_events(client.post("/v1/completions", json={**body, "stop": stop, "stream": True}))[:-1]
    streamed = [t for e in events for t in ((e["choices"][0]["logprobs"] or {}).get("tokens", []))]
    assert streamed == choice["logprobs"]["tokens"] and "".join(e["choices"][0]["text"] for e in events) == choice["text"]

    chat = {"messages": [{"role": "user", "content": "একদিন সকালে"}], "max_tokens": 24, "temperature": 0.9,
            "seed": 5, "logprobs": True}
    free = client.post("/v1/chat/completions", json=chat).json()["choices"][0]["logprobs"]["content"]
    i, stop = stop_at_token([bytes(e["bytes"]) for e in free], after=4)
    out = client.post("/v1/chat/completions", json={**chat, "stop": stop}).json()
    assert out["choices"][0]["logprobs"]["content"] == free[:i] and out["usage"]["completion_tokens"] == i + 2
    events = sse_events(client.post("/v1/chat/completions", json={**chat, "stop": stop, "stream": True}))[:-1]
    assert [e for ev in events for c in ev["choices"] for e in ((c.get("logprobs") or {}).get("content") or [])] \
        == free[:i]


def test_chat_logprobs(client):
    body = {"messages": [{"role": "user", "content": "তোমার নাম কী?"}], "max_tokens": 12, "seed": 3,
            "logprobs": True, "top_logprobs": 3}
    out = client.post("/v1/chat/completions", json=body).json()
    [choice] = out["choices"]
    content = choice["logprobs"]["content"]
    assert len(content) <= out["usage"]["completion_tokens"]  # one entry per token of the answer
    assert content and all(len(e["top_logprobs"]) <= 3 and e["logprob"] <= 0 for e in content)
    assert all(bytes(e["bytes"]) == token_bytes(e["token"]) for e in content)
    plain = client.post("/v1/chat/completions", json={**body, "logprobs": None, "top_logprobs": None}).json()
    assert plain["choices"][0]["message"] == choice["message"] and plain["choices"][0]["logprobs"] is None
    only = client.post("/v1/chat/completions", json={**body, "top_logprobs": None}).json()["choices"][0]
    assert all(e["top_logprobs"] == [] for e in only["logprobs"]["content"])
    assert [e["token"] for e in only["logprobs"]["content"]] == [e["token"] for e in content]
    assert_openai_error(client.post("/v1/chat/completions", json={**body, "logprobs": False}), 400)
    assert_openai_error(client.post("/v1/chat/completions", json={**body, "top_logprobs": 50}), 400)


def test_an_answer_opening_with_part_of_a_character_drops_its_space_from_the_bytes(trained_run):
    """A first token b" \xe2\x80" (a space and part of a character) kept its space in `bytes`,
    though the content drops the answer's leading whitespace, as it does for whole tokens."""
    from banglaslm.generation.sampling import TokenLogprob
    from banglaslm.runfolder import load_model
    from banglaslm.server.events import LogprobFormat

    tok = load_model(trained_run).tokenizer
    def partial(i):
        try:
            tok.token_bytes(i).decode("utf-8")
            return False
        except UnicodeDecodeError:
            return tok.token_bytes(i).startswith(b" ")
    spaced = [i for i in range(tok.vocab_size) if partial(i)]
    assert spaced, "the tokenizer has no space + part-of-a-character token"
    [first, second] = LogprobFormat(tok, chat=True)([TokenLogprob(spaced[0], 0.5, [])] * 2)["content"]
    assert bytes(first["bytes"]) == tok.token_bytes(spaced[0])[1:] and not first["token"].startswith("bytes:\\x20")
    assert bytes(second["bytes"]) == tok.token_bytes(spaced[0])  # inside the answer, a space is text


# ---- over HTTP with the openai client ------------------------------------------------------

server_app: list = []  # the app behind `server_url`


@pytest.fixture(scope="module")
def server_url(trained_run):
    app = create_app(trained_run, api_key=KEY, model_name=MODEL)
    server_app[:] = [app]
    with live(app) as base:
        yield f"{base}/v1"


@pytest.fixture(scope="module")
def oai(server_url):
    return openai.OpenAI(base_url=server_url, api_key=KEY, max_retries=0, timeout=60)


def test_openai_client_completions(oai):
    assert [m.id for m in oai.models.list()] == [MODEL]
    kwargs = dict(model=MODEL, prompt="একদিন সকালে", max_tokens=20, seed=5, temperature=0.8, top_p=0.95,
                  extra_body={"top_k": 50, "repetition_penalty": 1.1})
    plain = oai.completions.create(**kwargs)
    assert plain.object == "text_completion" and plain.usage.total_tokens > 0
    pieces = [c.choices[0].text for c in oai.completions.create(stream=True, **kwargs) if c.choices]
    assert "".join(pieces) == plain.choices[0].text


def test_openai_client_logprobs(oai):
    done = oai.completions.create(model=MODEL, prompt="আমি", max_tokens=8, seed=1, logprobs=3)
    assert len(done.choices[0].logprobs.tokens) == len(done.choices[0].logprobs.top_logprobs) > 0
    stream = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "আমি"}], max_tokens=8,
                                         seed=1, logprobs=True, top_logprobs=2, stream=True)
    entries = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert entries and all(len(e.top_logprobs) <= 2 and e.logprob <= 0 for e in entries)


def test_openai_client_chat(oai):
    messages = [{"role": "user", "content": "বাংলা ভাষা নিয়ে কিছু বলো"}]
    plain = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=25, seed=2)
    assert plain.object == "chat.completion" and plain.choices[0].message.role == "assistant"
    stream = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=25, seed=2, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_openai_client_errors(oai, server_url):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server_url, api_key="nope", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=MODEL, prompt="আমি", temperature=5)
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-4", prompt="আমি")
    assert oai.completions.create(model=MODEL, prompt="আমি", max_tokens=3).choices


def test_concurrent_requests_match_serial(oai):
    jobs = [(["আমি", "একদিন", "নদীর ধারে", "বাংলা"][i % 4], 100 + i) for i in range(8)]

    def complete(job):
        prompt, seed = job
        return oai.completions.create(model=MODEL, prompt=prompt, max_tokens=20, seed=seed).choices[0].text

    def chat(job):
        prompt, seed = job
        return oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                           max_tokens=20, seed=seed, stream=True)

    def chat_text(job):
        return "".join(c.choices[0].delta.content or "" for c in chat(job) if c.choices)

    serial = [complete(j) for j in jobs]
    serial_chat = [chat_text(j) for j in jobs]
    batch = server_app[0].state.service.worker.batch
    sizes, step = [], batch.step

    def watched():  # how many generations each decode step served
        sizes.append(len(batch.live))
        step()
    batch.step = watched
    try:
        with ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(complete, jobs))
            parallel_chat = list(pool.map(chat_text, jobs))
    finally:
        del batch.step
    assert parallel == serial
    assert parallel_chat == serial_chat
    assert len(set(serial)) > 1  # different seeds and prompts really differ
    assert max(sizes) > 1  # the concurrent requests were decoded together


def test_stream_stops_when_the_client_leaves(server_url, trained_run):
    """A client that reads one chunk and hangs up: the worker stops that generation."""
    import httpx

    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "আমি", "max_tokens": 1000, "temperature": 1.0}
    with httpx.Client(base_url=server_url, headers=headers, timeout=60) as http:
        for seed in range(20):  # a seed whose answer is long
            full = http.post("/completions", json={**body, "seed": seed}).json()["usage"]["completion_tokens"]
            if full >= 60:
                break
        assert full >= 60
        batch = server_app[0].state.service.worker.batch
        calls, step = [], batch.step

        def slow():  # 20 ms a step: the whole answer would take over a second
            calls.append(1)
            time.sleep(0.02)
            step()
        batch.step = slow
        try:
            with http.stream("POST", "/completions", json={**body, "seed": seed, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        break
            time.sleep(1.0)
            settled = len(calls)
            time.sleep(0.5)
            assert len(calls) == settled  # nothing runs any more
            assert settled < full // 2
        finally:
            del batch.step  # the class's own again
        assert http.post("/completions", json={"prompt": "আমি", "max_tokens": 3}).status_code == 200
