import pytest
import torch

from banglaslm.config import SamplingParams
from banglaslm.errors import UserError
from banglaslm.generation.engine import generate
from banglaslm.generation.sampling import filter_logits
from banglaslm.runfolder import load_model


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_model(trained_run)


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isfinite(filter_logits(logits, 2, None)).tolist() == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, None, 0.8)).tolist() == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, None, 0.81)).tolist() == [True, True, True, False]
    assert torch.isfinite(filter_logits(logits, None, 0.01)).tolist() == [True, False, False, False]
    assert torch.isfinite(filter_logits(logits, None, 1.0)).all()


@pytest.mark.parametrize("top_p", [1e-30, 1e-46, 1e-300, 5e-324])
def test_any_allowed_top_p_keeps_the_most_likely_token(top_p):
    """A top_p below float32's smallest number rounded to 0 and dropped every token (the
    sampler then drew the last id): the most likely token always stays, in every row."""
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]))
    assert torch.isfinite(filter_logits(logits, None, top_p)).tolist() == [[False, True, False], [True, False, False]]


def test_greedy_is_deterministic_and_seed_reproduces(loaded):
    a = generate(loaded, "আমি", SamplingParams(max_new_tokens=20, greedy=True))
    b = generate(loaded, "আমি", SamplingParams(max_new_tokens=20, greedy=True))
    assert a.text == b.text
    s1 = generate(loaded, "আমি", SamplingParams(max_new_tokens=30, temperature=1.5, seed=3))
    s2 = generate(loaded, "আমি", SamplingParams(max_new_tokens=30, temperature=1.5, seed=3))
    s3 = generate(loaded, "আমি", SamplingParams(max_new_tokens=30, temperature=1.5, seed=4))
    assert s1.text == s2.text and s1.text != s3.text


def test_prompt_is_encoded_like_training_text(loaded, monkeypatch):
    seen = []
    original = loaded.model.forward

    def spy(idx, targets=None):
        seen.append(idx[0].tolist())
        return original(idx, targets)
    monkeypatch.setattr(loaded.model, "forward", spy)
    generate(loaded, "  নদী\u200b ", SamplingParams(max_new_tokens=1, greedy=True))
    tok = loaded.tokenizer
    # EOD first (how every training document starts), then the normalized prompt, no trailing EOD
    assert seen[0] == [tok.eod_id] + tok.encode("নদী")


def test_long_context_is_cropped_and_output_is_clean_utf8(loaded):
    long_prompt = "আমার সোনার বাংলা " * 40
    g = generate(loaded, long_prompt, SamplingParams(max_new_tokens=50, temperature=1.2, seed=0))
    assert g.tokens <= 50
    assert "\ufffd" not in g.text and "<|endoftext|>" not in g.text
    g.text.encode("utf-8")


def test_stops_at_end_of_document(loaded, monkeypatch):
    eod = loaded.tokenizer.eod_id
    original = loaded.model.forward

    def always_eod(idx, targets=None):
        logits, loss = original(idx, targets)
        logits = torch.full_like(logits, -1e9)
        logits[..., eod] = 0
        return logits, loss
    monkeypatch.setattr(loaded.model, "forward", always_eod)
    g = generate(loaded, "আমি", SamplingParams(max_new_tokens=50, greedy=True))
    assert g.tokens == 0 and g.text == ""


@pytest.mark.parametrize("kwargs, prompt, message", [
    ({}, "   ", "prompt is empty"),
    ({"temperature": -1}, "ক", "temperature must be >= 0"),
    ({"top_p": 0}, "ক", r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.01}, "ক", r"top_p must be in \(0, 1\]"),
    ({"top_k": 0}, "ক", "top_k"),
    ({"max_new_tokens": 0}, "ক", "max_new_tokens"),
])
def test_bad_options(loaded, kwargs, prompt, message):
    with pytest.raises(UserError, match=message):
        generate(loaded, prompt, SamplingParams(**kwargs))


def test_zero_temperature_decodes_greedily(loaded):
    """Temperature 0 is the argmax, as in the server and OpenAI's API: the same tokens as `greedy`
    whatever the seed, with or without greedy set too."""
    greedy = generate(loaded, "ক", SamplingParams(max_new_tokens=12, greedy=True)).text
    for seed in (1, 2):
        assert generate(loaded, "ক", SamplingParams(max_new_tokens=12, temperature=0, seed=seed)).text == greedy
    assert generate(loaded, "ক", SamplingParams(max_new_tokens=12, temperature=0, greedy=True)).text == greedy
