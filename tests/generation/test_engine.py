import pytest
import torch
from conftest import require_literature

from banglaslm.config import SamplingParams, build_config
from banglaslm.errors import UserError
from banglaslm.generation.engine import Engine, generate
from banglaslm.generation.sampling import adjust_logits, filter_logits
from banglaslm.model import GPT
from banglaslm.runfolder import load_model

PROMPTS = ["আমি", "একদিন সকালে নদীর ধারে", "বাংলা"]


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_model(trained_run)


def random_model(arch: str, vocab: int, block: int = 32) -> GPT:
    cfg = build_config(overrides={"arch": arch, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": block,
                                  "dropout": 0.0, "vocab_size": vocab})
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    # Larger weights than the init give peaked, varied distributions without near-ties. (In
    # "modern" the embedding is also the output head: scaling it makes each token predict itself.)
    with torch.no_grad():
        if arch == "gpt":
            model.tok_emb.weight.mul_(20)
        else:
            for linear in (m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)):
                linear.weight.mul_(16)
    return model


@pytest.fixture(scope="module", params=[(model, kernel) for model in ("gpt", "modern", "trained")
                                        for kernel in ("kernel", "torch")], ids="-".join)
def engine(request, loaded):
    """Each model with decode steps in the C kernel where it can run (cpu_decode.py), and in
    PyTorch alone."""
    name, kernel = request.param
    model = loaded.model if name == "trained" else random_model(name, loaded.tokenizer.vocab_size)
    return Engine(model, loaded.tokenizer, use_kernel=kernel == "kernel")


def uncached_greedy(engine: Engine, prompt: str, max_new: int) -> list[int]:
    """The engine's policy, written as a full forward pass over the window at every step."""
    model, block, keep = engine.model, engine.block_size, engine.keep
    context = engine.encode_prompt(prompt)
    start = max(0, len(context) - block)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            logits, _ = model(torch.tensor([context[start:]]))
            token = int(logits[0, -1].argmax())
            if token == engine.tokenizer.eod_id:
                break
            out.append(token)
            context.append(token)
            if len(context) - start > block:
                start = len(context) - keep
    return out


def test_cached_greedy_equals_uncached_past_the_block(engine):
    max_new = 3 * engine.block_size + 5
    for prompt in (PROMPTS[1], ("আমার সোনার বাংলা " * 12).strip()):  # the second fills the block at once
        [[c]] = engine.generate([prompt], SamplingParams(max_new_tokens=max_new, greedy=True))
        assert c.token_ids == uncached_greedy(engine, prompt, max_new)
        assert c.finish_reason == "stop" or len(c.token_ids) == max_new


def test_random_models_really_run_past_the_block(loaded):
    require_literature()  # its figures hold for models of the shared books, not the stand-in corpus
    # The models above must not stop early or loop on one token, or the tests prove little.
    for arch in ("gpt", "modern"):
        eng = Engine(random_model(arch, loaded.tokenizer.vocab_size), loaded.tokenizer)
        [[c]] = eng.generate([PROMPTS[1]], SamplingParams(max_new_tokens=100, greedy=True))
        assert c.finish_reason == "length" and len(c.token_ids) == 100 > 3 * eng.block_size
        assert len(set(c.token_ids[-50:])) > 20


@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_cached_logits_match_full_forward(arch):
    model = random_model(arch, 97, block=24)
    x = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(x)
        cache = model.new_cache(3)
        steps = [model(x[:, :7], cache=cache)[0], model(x[:, 7:11], cache=cache)[0]]  # prefill, chunk
        steps += [model(x[:, t:t + 1], cache=cache)[0] for t in range(11, 24)]          # one by one
        assert cache.length == 24
        assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-4
        # Left padding: row 1 padded by 5 computes what its 19 real tokens compute alone.
        cache = model.new_cache(2, pad=torch.tensor([0, 5]))
        padded = torch.stack([x[0], torch.cat([torch.zeros(5, dtype=torch.long), x[1, 5:]])])
        first = model(padded[:, :12], cache=cache)[0]
        rest = [model(padded[:, t:t + 1], cache=cache)[0] for t in range(12, 24)]
        alone, _ = model(x[1:, 5:])
        got = torch.cat([first, *rest], dim=1)
        assert (got[0] - full[0]).abs().max() < 1e-4
        assert (got[1, 5:] - alone[0]).abs().max() < 1e-4
        with pytest.raises(ValueError, match="exceeds block_size"):
            model(x[:, :1], cache=cache)


def test_batch_of_different_lengths_equals_each_alone(engine):
    params = SamplingParams(max_new_tokens=engine.block_size + 20, greedy=True)
    batch = engine.generate(PROMPTS, params)
    assert [len(b) for b in batch] == [1, 1, 1]
    for prompt, [c] in zip(PROMPTS, batch):
        [[alone]] = engine.generate([prompt], params)
        assert c.token_ids == alone.token_ids and c.text == alone.text


def test_seed_reproduces_and_samples_differ(loaded):
    engine = Engine(loaded.model, loaded.tokenizer)
    params = SamplingParams(max_new_tokens=30, temperature=1.5, seed=7, n=4)
    a = engine.generate(PROMPTS[:2], params)
    b = engine.generate(PROMPTS[:2], params)
    assert [[c.token_ids for c in cs] for cs in a] == [[c.token_ids for c in cs] for cs in b]
    for completions in a:
        assert len(completions) == 4
        assert len({tuple(c.token_ids) for c in completions}) == 4  # each sample its own seed
    # A prompt's samples do not depend on what else is in the batch ...
    [alone] = engine.generate([PROMPTS[1]], params)
    assert [c.token_ids for c in alone] == [c.token_ids for c in a[1]]
    # ... but do depend on the seed.
    other = engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=30, temperature=1.5, seed=8, n=4))
    assert [c.token_ids for c in other[0]] != [c.token_ids for c in a[1]]


def probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1)[0]


def test_min_p_keeps_tokens_near_the_top():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep = lambda m: torch.isfinite(adjust_logits(logits, SamplingParams(temperature=1.0, min_p=m)))[0].tolist()
    assert keep(0.2) == [True, True, True, False]    # 0.05 < 0.2 * 0.5
    assert keep(0.7) == [True, False, False, False]  # 0.3 < 0.35
    assert keep(0.0) == [True] * 4
    p = probs(adjust_logits(logits, SamplingParams(temperature=1.0, min_p=0.2)))
    assert p[3] == 0 and p[0] > 0.5 and float(p.sum()) == pytest.approx(1.0)


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    params = SamplingParams(temperature=1.0, repetition_penalty=2.0)
    out = adjust_logits(logits, params, seen=seen)
    assert out.tolist() == [[1.0, -2.0, 1.0, 0.5]]  # positive / 2, negative * 2, unseen kept
    before, after = probs(logits), probs(out)
    assert after[0] < before[0] and after[1] < before[1]
    assert after[2] > before[2] and after[3] > before[3]
    # Greedy sees the penalty too: token 0 no longer wins outright... it ties with token 2.
    assert adjust_logits(logits, SamplingParams(greedy=True, repetition_penalty=3.0), seen=seen).argmax() == 2


def test_presence_and_frequency_penalties():
    logits = torch.zeros(1, 4)
    counts = torch.tensor([[3.0, 0.0, 1.0, 0.0]])
    pres = adjust_logits(logits, SamplingParams(temperature=1.0, presence_penalty=0.5), counts=counts)
    assert pres.tolist() == [[-0.5, 0.0, -0.5, 0.0]]  # once per token that appeared at all
    freq = adjust_logits(logits, SamplingParams(temperature=1.0, frequency_penalty=0.5), counts=counts)
    assert freq.tolist() == [[-1.5, 0.0, -0.5, 0.0]]  # in proportion to how often
    p = probs(freq)
    assert p[0] < p[2] < p[1] == p[3]
    # A negative penalty encourages repeats.
    assert probs(adjust_logits(logits, SamplingParams(temperature=1.0, presence_penalty=-1.0), counts=counts))[0] > 0.25


def test_temperature_top_k_top_p_order():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, 2, None)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, None, 0.81)).tolist() == [[True, True, True, False]]
    hot = probs(adjust_logits(logits, SamplingParams(temperature=2.0)))
    assert hot[0] < 0.5 and hot[3] > 0.05  # flatter
    assert probs(adjust_logits(logits, SamplingParams(temperature=0.5)))[0] > 0.5  # sharper


def test_penalties_change_what_the_engine_generates(loaded):
    engine = Engine(loaded.model, loaded.tokenizer)
    plain = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=60, greedy=True))[0][0]
    penalized = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=60, greedy=True,
                                                             frequency_penalty=2.0))[0][0]
    distinct = lambda ids: len(set(ids)) / len(ids)
    assert distinct(penalized.token_ids) > distinct(plain.token_ids)


def test_stop_strings(loaded):
    engine = Engine(loaded.model, loaded.tokenizer)
    base = SamplingParams(max_new_tokens=60, temperature=1.0, seed=5)
    [[full]] = engine.generate([PROMPTS[1]], base)
    assert len(full.text) > 12
    stop = full.text[8:11]
    cut = full.text.index(stop)
    with_stop = SamplingParams(max_new_tokens=60, temperature=1.0, seed=5, stop=["কখনোনা", stop])
    [[c]] = engine.generate([PROMPTS[1]], with_stop)
    assert c.text == full.text[:cut].rstrip("\u09cd\u200c\u200d") and c.finish_reason == "stop"
    assert c.token_ids == full.token_ids[:len(c.token_ids)] and len(c.token_ids) < len(full.token_ids)
    pieces = list(engine.stream(PROMPTS[1], with_stop))
    assert "".join(pieces) == c.text and all(stop not in p for p in pieces)


def test_stream_steps_equal_generate(loaded):
    engine = Engine(loaded.model, loaded.tokenizer)
    params = SamplingParams(max_new_tokens=40, temperature=0.9, top_k=20, seed=11)
    [[c]] = engine.generate([PROMPTS[2]], params)
    assert "".join(engine.stream(PROMPTS[2], params)) == c.text
    steps = list(engine.stream_steps(PROMPTS[2], params))
    assert [s.token_id for s in steps if s.token_id != loaded.tokenizer.eod_id] == c.token_ids
    assert "".join(s.text for s in steps) == c.text
    assert steps[-1].finish_reason == c.finish_reason and all(s.finish_reason is None for s in steps[:-1])
    assert c.logprobs is None and all(s.logprob is None for s in steps)


def test_logprobs_are_the_distribution_each_token_was_drawn_from(loaded):
    """Each reported probability is recomputed from a plain forward pass over the context:
    softmax(logits / temperature) restricted to the top-k, as the sampler draws from."""
    engine = Engine(loaded.model, loaded.tokenizer)
    # A barely trained test model often ends the document at once: take the first seed whose
    # sample has a few tokens (within the block, so that a plain forward pass sees it all).
    for seed in range(50):
        plain = SamplingParams(max_new_tokens=20, temperature=0.9, top_k=20, seed=seed)
        [[ref]] = engine.generate([PROMPTS[0]], plain)
        if len(ref.token_ids) > 3:
            break
    asked = SamplingParams(**{**plain.__dict__, "logprobs": 5})
    [[c]] = engine.generate([PROMPTS[0]], asked)
    assert c.token_ids == ref.token_ids and c.text == ref.text  # asking changes nothing drawn
    assert [e.token_id for e in c.logprobs] == c.token_ids
    context = engine.encode_prompt(PROMPTS[0])
    assert len(context) + 20 <= loaded.model.config.block_size and len(c.token_ids) > 3
    with torch.no_grad():
        for entry in c.logprobs:
            logits = loaded.model(torch.tensor([context]))[0][0, -1] / 0.9
            logits[logits < torch.topk(logits, 20).values[-1]] = float("-inf")
            probs = torch.softmax(logits, -1)
            assert entry.prob == pytest.approx(probs[entry.token_id].item(), abs=1e-5)
            top = torch.topk(probs, 5)
            assert [cand.token_id for cand in entry.candidates] == top.indices.tolist()
            assert [cand.prob for cand in entry.candidates] == pytest.approx(top.values.tolist(), abs=1e-5)
            context.append(entry.token_id)
    steps = [s for s in engine.stream_steps(PROMPTS[0], asked) if s.token_id != loaded.tokenizer.eod_id]
    assert [s.logprob for s in steps] == c.logprobs
    greedy = engine.generate([PROMPTS[2]], SamplingParams(max_new_tokens=10, greedy=True, logprobs=3))[0][0]
    for entry in greedy.logprobs:
        assert entry.token_id == entry.candidates[0].token_id and entry.prob == entry.candidates[0].prob
    # top_k=2 leaves two tokens with probability > 0: no zero-probability candidates are reported.
    narrow = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=5, top_k=2, seed=1, logprobs=10))[0][0]
    assert all(len(e.candidates) == 2 and all(x.prob > 0 for x in e.candidates) for e in narrow.logprobs)
    with pytest.raises(UserError, match="logprobs"):
        SamplingParams(logprobs=-1).validate()


def test_finish_reasons_and_eval_mode(loaded, monkeypatch):
    model = loaded.model
    engine = Engine(model, loaded.tokenizer)
    [[c]] = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=3, greedy=True))
    assert c.finish_reason == "length" and len(c.token_ids) == 3
    eod, calls, original = loaded.tokenizer.eod_id, [], model.forward

    def eod_on_third_call(idx, targets=None):
        logits, loss = original(idx, targets)
        calls.append(idx.shape)
        if len(calls) == 3:
            logits = torch.full_like(logits, -1e9)
            logits[..., eod] = 0
        return logits, loss
    monkeypatch.setattr(model, "forward", eod_on_third_call)
    model.train()
    try:
        [[c]] = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=50, greedy=True))
        assert model.training  # restored
    finally:
        model.eval()
    assert c.finish_reason == "stop" and len(c.token_ids) == 2
    # One prefill over the whole prompt, then one token per step.
    prompt_len = len(engine.encode_prompt(PROMPTS[0]))
    assert calls == [torch.Size([1, prompt_len]), torch.Size([1, 1]), torch.Size([1, 1])]


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
    ({"min_p": 1.5}, r"min_p must be in \[0, 1\]"),
    ({"top_k": 0}, r"top_k must be at least 1 \(leave it out, None, for no top-k; Hugging Face writes that as 0\)"),
    ({"repetition_penalty": 0}, "repetition_penalty must be > 0"),
    ({"presence_penalty": 3}, r"presence_penalty must be in \[-2, 2\]"),
    ({"frequency_penalty": -2.5}, r"frequency_penalty must be in \[-2, 2\]"),
    ({"max_new_tokens": 0}, r"max_new_tokens must be in \[1, "),
    ({"n": 0}, "n .*must be at least 1"),
    ({"stop": [""]}, "stop strings must be non-empty"),
    # the kinds a Python caller can get wrong (they failed deep in torch)
    ({"top_k": 50.0}, "top_k must be an integer, got 50.0"),
    ({"seed": 1.0}, "seed must be an integer"),
    ({"temperature": "0.8"}, "temperature must be a number, got '0.8'"),
    ({"temperature": None}, "temperature must be a number, got None"),
    ({"max_new_tokens": "5"}, "max_new_tokens must be an integer"),
    ({"stop": 5}, "stop must be a list of strings"),
])
def test_bad_params(kwargs, message):
    with pytest.raises(UserError, match=message):
        SamplingParams(**kwargs).validate()
    SamplingParams(greedy=True, temperature=0).validate()  # greedy needs no temperature


def test_empty_prompt_and_stream_n(loaded):
    engine = Engine(loaded.model, loaded.tokenizer)
    with pytest.raises(UserError, match="prompt is empty"):
        engine.generate(["  \u200b "], SamplingParams())
    with pytest.raises(UserError, match="set n=1"):
        list(engine.stream("আমি", SamplingParams(n=2)))
    with pytest.raises(UserError, match="returns one continuation"):
        generate(loaded, "আমি", SamplingParams(n=2))


def test_a_stop_string_assigned_after_construction_is_not_read_letter_by_letter():
    params = SamplingParams()
    params.stop = "সরে"
    with pytest.raises(UserError, match="stop must be a list"):
        params.validate()


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_an_embedding_padded_past_the_tokenizer_never_yields_an_id_it_lacks(loaded, sampled):
    """A model whose vocabulary is larger than its tokenizer's (padding, as some imported models
    have) sampled the padded ids, and decoding them raised IndexError."""
    vocab = loaded.tokenizer.vocab_size
    model = random_model("gpt", vocab + 64)
    head = torch.nn.Linear(model.config.n_embd, vocab + 64)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[vocab:] = 1e4  # the padded ids are all the model wants to say
        head.bias[loaded.tokenizer.eod_id] = -1e4
        head.bias[:vocab] += torch.arange(vocab) % 7  # below them, a real choice
    model.lm_head = head
    engine = Engine(model, loaded.tokenizer, use_kernel=False)
    params = SamplingParams(max_new_tokens=12, seed=0, temperature=1.0, repetition_penalty=1.2) if sampled \
        else SamplingParams(max_new_tokens=12, greedy=True)
    [[completion]] = engine.generate(["আমি"], params)
    assert len(completion.token_ids) == 12 and max(completion.token_ids) < vocab


def test_prompts_may_be_any_iterable_of_texts_but_not_one_text(loaded):
    engine = Engine(loaded.model, loaded.tokenizer)
    params = SamplingParams(max_new_tokens=3, greedy=True)
    as_list = engine.generate(["আমি", "তুমি"], params)
    assert engine.generate((p for p in ["আমি", "তুমি"]), params) == as_list == engine.generate({"আমি": 1, "তুমি": 2}.keys(), params)
    with pytest.raises(UserError, match=r"prompts must be a list of texts, got str .*use \[prompt\] for one"):
        engine.generate("আমি", params)
