"""Continuous batching (batching.py): sequences that share decode steps, join and leave at
different times, each with its own settings, give exactly what they give alone."""

import pytest
import torch

from banglaslm.config import SamplingParams
from banglaslm.generation.batching import Batch, Sequence
from banglaslm.generation.engine import Engine
from banglaslm.runfolder import load_model
from banglaslm.text import opens_a_word

PROMPTS = ["আমি", "একদিন সকালে নদীর ধারে", "বাংলা", "আমার সোনার বাংলা " * 3]


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_model(trained_run)


def settings(i: int) -> SamplingParams:
    """A different mix of sampling settings for each sequence."""
    mixes = [dict(greedy=True),
             dict(temperature=1.0, seed=11, top_k=20),
             dict(temperature=0.9, seed=12, top_p=0.9, stop=["।"], logprobs=3),
             dict(temperature=1.2, seed=13, min_p=0.05, repetition_penalty=1.2, frequency_penalty=0.5),
             dict(greedy=True, presence_penalty=1.0, stop=["\n"])]
    return SamplingParams(max_new_tokens=[40, 80, 25, 60, 90][i % 5], **mixes[i % 5])


def alone(engine: Engine, prompt: str, params: SamplingParams):
    return engine.generate([prompt], params)[0][0]


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
def test_each_sequence_gets_what_it_gets_alone(loaded, kernel):
    engine = Engine(loaded.model, loaded.tokenizer, use_kernel=kernel)
    batch = Batch(engine, capacity=4)
    assert (batch.fused is None) == (not kernel) or batch.idle
    jobs = [(PROMPTS[i % len(PROMPTS)], settings(i)) for i in range(10)]
    done, steps, waiting = {}, {}, list(enumerate(jobs))
    rounds = 0
    while waiting or not batch.idle:
        # Join at different times: at most one new sequence per round, while there is room.
        if waiting and not batch.full and rounds % 3 == 0:
            i, (prompt, params) = waiting.pop(0)
            streamed = i % 2 == 0
            steps[i] = []
            batch.add(Sequence(engine.encode_prompt(prompt), params,
                               on_step=steps[i].append if streamed else None,
                               on_done=lambda c, e, i=i: done.setdefault(i, (c, e)),
                               opens_word=opens_a_word(prompt)))  # the last prompt ends in a space
        if not batch.idle:
            batch.step()
            assert len(batch.live) <= 4
        rounds += 1
    assert (batch.fused is not None) == kernel
    assert sorted(done) == list(range(10))
    for i, (prompt, params) in enumerate(jobs):
        got, error = done[i]
        assert error is None
        want = alone(engine, prompt, params)
        assert got.token_ids == want.token_ids, i
        assert got.text == want.text and got.finish_reason == want.finish_reason
        if params.logprobs is not None:
            assert [e.token_id for e in got.logprobs] == got.token_ids
            assert [round(e.prob, 5) for e in got.logprobs] == [round(e.prob, 5) for e in want.logprobs]
        if steps[i]:  # streamed: the pieces join to the text, one step per sampled token
            assert "".join(s.text for s in steps[i]) == got.text
            assert steps[i][-1].finish_reason == got.finish_reason
    lengths = {len(done[i][0].token_ids) for i in done}
    assert max(lengths) > loaded.model.config.block_size  # someone went past the block size


def test_a_stopped_sequence_leaves_and_the_others_go_on(loaded):
    engine = Engine(loaded.model, loaded.tokenizer)
    batch = Batch(engine, capacity=2)
    stop_now = {"flag": False}

    class Cancelled(Exception):
        pass

    def check():
        if stop_now["flag"]:
            raise Cancelled()
    results = {}
    params = SamplingParams(max_new_tokens=30, greedy=True)
    batch.add(Sequence(engine.encode_prompt("আমি"), params, check=check,
                       on_done=lambda c, e: results.setdefault("a", (c, e))))
    batch.add(Sequence(engine.encode_prompt("বাংলা"), params, on_done=lambda c, e: results.setdefault("b", (c, e))))
    assert batch.full
    with pytest.raises(RuntimeError, match="full"):
        batch.add(Sequence(engine.encode_prompt("নদী"), params))
    batch.step()
    stop_now["flag"] = True
    batch.step()
    assert isinstance(results["a"][1], Cancelled) and results["a"][0] is None
    assert len(batch.live) == 1 and not batch.full  # its slot is free again
    batch.add(Sequence(engine.encode_prompt("নদী"), params, on_done=lambda c, e: results.setdefault("c", (c, e))))
    while not batch.idle:
        batch.step()
    assert results["b"][0].token_ids == alone(engine, "বাংলা", params).token_ids
    assert results["c"][0].token_ids == alone(engine, "নদী", params).token_ids


def test_bad_settings_end_only_that_sequence(loaded):
    engine = Engine(loaded.model, loaded.tokenizer)
    batch = Batch(engine)
    results = {}
    batch.add(Sequence(engine.encode_prompt("আমি"), SamplingParams(top_p=0), on_done=lambda c, e: results.update(bad=e)))
    batch.add(Sequence(engine.encode_prompt("আমি"), SamplingParams(max_new_tokens=3, greedy=True),
                       on_done=lambda c, e: results.update(good=c)))
    while not batch.idle:
        batch.step()
    assert "top_p" in str(results["bad"]) and len(results["good"].token_ids) == 3
    assert batch.free == sorted(batch.free, reverse=True) and len(batch.free) == batch.capacity


def test_a_batch_step_is_one_kernel_call(loaded, monkeypatch):
    from banglaslm.generation.cpu_decode import CpuDecoder

    calls = []
    original = CpuDecoder.step_rows

    def spy(self, keys, values, tokens, lengths, slots):
        calls.append(tokens.shape[0])
        return original(self, keys, values, tokens, lengths, slots)
    monkeypatch.setattr(CpuDecoder, "step_rows", spy)
    engine = Engine(loaded.model, loaded.tokenizer)
    batch = Batch(engine, capacity=8)
    for prompt in PROMPTS:
        batch.add(Sequence(engine.encode_prompt(prompt), SamplingParams(max_new_tokens=10, greedy=True)))
    batch.step()
    assert calls == [len(PROMPTS)]
    assert torch.equal(batch.keys[0][len(PROMPTS):], torch.zeros_like(batch.keys[0][len(PROMPTS):]))


def test_no_penalty_touches_the_end_of_document_token(loaded):
    """Only a context's leading end-of-document token was spared the repetition penalty: from a
    chat's second answer on (the first ends with one) the token that ends an answer was penalized,
    and answers ran on. The engine and the server's batches now spare every one."""
    from banglaslm.generation.sampling import adjust_logits

    engine = Engine(loaded.model, loaded.tokenizer)
    eod = loaded.tokenizer.eod_id
    context = [eod, *loaded.tokenizer.encode("আমি বাংলা"), eod, *loaded.tokenizer.encode("একদিন")]  # as a chat's
    params = SamplingParams(max_new_tokens=1, greedy=True, repetition_penalty=3.0, presence_penalty=1.0,
                            logit_bias={eod: 4.0}, logprobs=5)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([context]))[0][:, -1, :engine.vocab]
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen[0, [t for t in context if t != eod]] = True
    want = torch.softmax(adjust_logits(logits.float(), params, seen=seen), -1)[0]
    got = {}
    batch = Batch(engine, capacity=2)
    batch.add(Sequence(context, params, on_step=lambda step: got.setdefault("batch", step.logprob)))
    while not batch.idle:
        batch.step()
    got["engine"] = next(engine.stream_steps(context, params)).logprob
    for where, logprob in got.items():
        assert eod in [c.token_id for c in logprob.candidates], where
        for c in logprob.candidates:
            assert c.prob == pytest.approx(float(want[c.token_id]), rel=1e-4, abs=1e-6), (where, c)


def test_a_prompt_ending_in_a_space_is_answered_with_a_new_word(loaded):
    """The prompt's trailing space is dropped before the model reads it (our tokenizers write a
    word's space with the word), so the model often went on with the last word: "একদিন সকালে "
    gave "একদিন সকালেির". Its first token now opens with a space, alone, in a batch and streamed;
    a prompt without the space is continued as it was."""
    engine = Engine(loaded.model, loaded.tokenizer)
    tok = loaded.tokenizer
    prompt = "একদিন সকালে "
    plain = SamplingParams(max_new_tokens=3, greedy=True)
    for params in (plain, SamplingParams(max_new_tokens=3, temperature=1.5, seed=4, n=4, logprobs=3)):
        for out in engine.generate([prompt], params)[0]:
            assert tok.token_bytes(out.token_ids[0]).startswith(b" "), out
            if params.logprobs:
                assert all(tok.token_bytes(c.token_id).startswith(b" ") for c in out.logprobs[0].candidates)
    first = next(engine.stream_steps(prompt, plain)).token_id
    got = []
    batch = Batch(engine, capacity=2)
    batch.add(Sequence(engine.encode_prompt(prompt), plain, on_step=got.append, opens_word=opens_a_word(prompt)))
    while not batch.idle:
        batch.step()
    assert got[0].token_id == first and tok.token_bytes(first).startswith(b" ")
    # without the space (or after a line break) nothing is constrained: the model's own choice
    unconstrained = engine.generate([prompt.strip()], plain)[0][0].token_ids[0]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([engine.encode_prompt(prompt.strip())]))[0][0, -1, :engine.vocab]
    assert unconstrained == int(logits.argmax())
    assert not opens_a_word("শিরোনাম\n ") and not opens_a_word("   ") and opens_a_word("ক\u00a0")
    from banglaslm.tokenizer import Tokenizer
    chars = Tokenizer.build_char("ab c")  # no token opens a word with its space: the space itself comes first
    assert [chars.token_bytes(i) for i in chars.space_openers] == [b" "]
