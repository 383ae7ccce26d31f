"""Property-based fuzzing of the server against its own OpenAPI schema (schemathesis).

Every generated request, valid or not, must get a non-5xx answer, and the server must still
be healthy afterwards. Generation limits are kept small so the fuzz run stays fast.
"""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from banglaslm.server.app import create_app  # noqa: E402
from banglaslm.server.schemas import ServerLimits  # noqa: E402


@pytest.fixture(scope="module")
def app(trained_run):
    return create_app(trained_run, limits=ServerLimits(max_tokens=8, default_max_tokens=4, max_n=2,
                                                       max_prompt_tokens=256))


def operations(app):
    # The server does not publish /openapi.json (no docs routes by default), so take the
    # schema FastAPI builds from the routes and point schemathesis at the app in-process.
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.app = app
    return [result.ok() for result in schema.get_all_operations()]


def test_no_server_errors_on_any_generated_request(app):
    ops = operations(app)
    paths = {(op.method.upper(), op.path) for op in ops}
    assert {("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")} <= paths
    checked = []
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            response = case.call()
            assert response.status_code < 500, (case.path, case.body, response.text[:300])
            if response.status_code >= 400 and case.method.upper() != "HEAD":  # every error is JSON (HEAD: no body)
                error = response.json().get("error")
                assert isinstance(error, dict) and error.get("message"), response.text[:300]
            checked.append(response.status_code)
        run()
    assert len(checked) >= 2 * len(ops)  # hypothesis really sent requests to every operation
    print("status codes:", {c: checked.count(c) for c in sorted(set(checked))})


def test_still_healthy_after_fuzzing(app):
    from fastapi.testclient import TestClient

    assert TestClient(app).get("/health").status_code == 200


NASTY_NUMBERS = [float("nan"), float("inf"), float("-inf"), 1e-45, -1e-45, 1e308, 2**70, -(2**70), 0, -1, 2**63]
NASTY_TEXT = ["\ud800", "a\udc80b", "\x00", "\u200b", "", " ", "🙂" * 3, "ক" * 5000]
FIELDS = {"max_tokens": NASTY_NUMBERS, "temperature": NASTY_NUMBERS, "top_p": NASTY_NUMBERS, "n": NASTY_NUMBERS,
          "seed": NASTY_NUMBERS, "presence_penalty": NASTY_NUMBERS, "frequency_penalty": NASTY_NUMBERS,
          "top_k": NASTY_NUMBERS, "min_p": NASTY_NUMBERS, "repetition_penalty": NASTY_NUMBERS,
          "logprobs": NASTY_NUMBERS, "stop": NASTY_TEXT, "prompt": NASTY_TEXT, "stream": [True, False]}


def test_no_server_errors_on_nasty_values(app):
    # The values schemathesis does not send: lone surrogates, NaN and infinities, numbers past
    # 64 bits, a temperature that underflows; streamed and not.
    import json

    from fastapi.testclient import TestClient
    from hypothesis import strategies as st

    body = st.fixed_dictionaries({"prompt": st.sampled_from(NASTY_TEXT + ["আমি"])},
                                 optional={k: st.sampled_from(v) for k, v in FIELDS.items() if k != "prompt"})
    seen = []

    @given(case=body, chat=st.booleans())
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(client, case, chat):
        if chat:
            case = {**{k: v for k, v in case.items() if k not in ("prompt", "logprobs")},
                    "messages": [{"role": "user", "content": case["prompt"]}]}
        raw = json.dumps(case, allow_nan=True)  # NaN and Infinity as Python's json writes them
        r = client.post("/v1/chat/completions" if chat else "/v1/completions", content=raw,
                        headers={"Content-Type": "application/json"})
        assert r.status_code < 500, (raw[:300], r.text[:300])
        if r.status_code >= 400:
            assert r.json()["error"]["message"]
        elif case.get("stream"):
            assert r.text.rstrip().endswith("data: [DONE]"), r.text[-300:]
        seen.append(r.status_code)
    with TestClient(app) as client:  # started as a server starts it (the app's lifespan)
        run(client)
    assert {200, 400} <= set(seen)
