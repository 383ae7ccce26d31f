"""The C decode step (cpu_decode.py + csrc/decode.c) against PyTorch's model.forward, and the
rules for when the engine uses it."""

import copy
import ctypes
import os
import platform
import shutil
import subprocess

import pytest
import torch

from banglaslm.config import SamplingParams, build_config
from banglaslm.generation import cpu_decode
from banglaslm.generation.cpu_decode import CpuDecoder
from banglaslm.generation.engine import STEP_PREFILL_BYTES, Engine
from banglaslm.model import GPT
from banglaslm.quantize import quantize_model

if shutil.which(os.environ.get("CC") or "cc") is None:
    pytest.skip("no C compiler here: the engine runs on PyTorch alone", allow_module_level=True)


def model_of(arch: str, block: int = 24, vocab: int = 97) -> GPT:
    """A small model of `arch`; "untied" is modern with its own output matrix."""
    tie = {"tie_embeddings": "false"} if arch == "untied" else {}
    cfg = build_config(overrides={"arch": "modern" if arch == "untied" else arch, "n_layer": 2, "n_head": 4,
                                  "n_embd": 64, "block_size": block, "dropout": 0.0, "vocab_size": vocab, **tie})
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    with torch.no_grad():  # biases and norm weights away from their init, so that they count
        for name, p in model.named_parameters():
            if not name.endswith(("qkv.weight", "proj.weight", "up.weight", "down.weight", "gate.weight")):
                p.add_(0.1 * torch.randn_like(p))
    return model


KINDS = ["none", "int8", "bf16"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch,B", [("gpt", 3), ("modern", 3), ("gpt", 1), ("modern", 1), ("gpt", 6), ("modern", 6),
                                    ("untied", 3)])
def test_steps_match_model_forward_with_padding_up_to_a_full_cache(arch, B, kind):
    """Against the model's own forward with the same stored weights: float32, or quantized
    (QuantLinear is the reference). B = 1 reads quantized rows directly, B > 1 through a tile,
    and B >= 4 runs four rows of the batch at once (6: four, then two alone)."""
    model = quantize_model(model_of(arch), kind)
    decoder = CpuDecoder.for_model(model)
    assert decoder is not None
    block = model.config.block_size
    pad = torch.tensor([0, 2, 5, 1, 0, 3])[:B]
    x = torch.randint(0, 97, (B, block), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours, ref = model.new_cache(B, pad=pad), model.new_cache(B, pad=pad)
        model(x[:, :7], cache=ours), model(x[:, :7], cache=ref)  # prefill in PyTorch for both
        worst = 0.0
        for t in range(7, block):  # the last step writes the cache's last slot
            got = decoder.step(ours, x[:, t])
            want = model(x[:, t:t + 1], cache=ref)[0][:, -1]
            worst = max(worst, float((got - want).abs().max()))
            assert ours.length == ref.length == t + 1
        assert worst < 1e-4, worst
        for layer in range(model.config.n_layer):  # the same keys and values were stored
            assert torch.allclose(ours.k[layer], ref.k[layer], atol=1e-5)
            assert torch.allclose(ours.v[layer], ref.v[layer], atol=1e-5)
        with pytest.raises(ValueError, match="refused"):  # no slot left: the engine re-prefills first
            decoder.step(ours, x[:, 0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_a_rows_logits_do_not_depend_on_the_rest_of_the_batch(arch, kind):
    """Bit for bit: each row decoded among others (B = 2, 4, 5, 9: four rows at a time, the rest
    one by one) gives the logits it gives alone, so a server's answer (its logprobs, and so its
    sampled tokens) does not depend on the other requests of the moment. Vocabulary 101 leaves
    matrix rows over after the fours."""
    model = quantize_model(model_of(arch, vocab=101), kind)
    decoder = CpuDecoder.for_model(model)
    x = torch.randint(0, 101, (9, 8), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        alone = []
        for b in range(9):
            cache = model.new_cache(1)
            alone.append(torch.cat([decoder.step(cache, x[b:b + 1, t]) for t in range(8)]))  # (T, vocab)
        for B in (2, 4, 5, 9):
            cache = model.new_cache(B)
            together = torch.stack([decoder.step(cache, x[:B, t]) for t in range(8)], dim=1)  # (B, T, vocab)
            for b in range(B):
                assert torch.equal(together[b], alone[b]), (B, b, float((together[b] - alone[b]).abs().max()))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction sets")
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])
def test_the_avx2_and_portable_builds_compute_the_same(tmp_path, march):
    """The step as a CPU with AVX2 but no AVX-512 (x86-64-v3), or with neither, would build it:
    the other SIMD path and the portable loops give the model's logits too."""
    if march == "x86-64-v3" and "avx2" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU cannot run AVX2 code")
    lib_path = tmp_path / "decode.so"
    flags = [f for f in cpu_decode.FLAGS if not f.startswith("-march")] + [f"-march={march}"]
    subprocess.run([os.environ.get("CC") or "cc", *flags, str(cpu_decode.SOURCE), "-o", str(lib_path), "-lm"],
                   check=True, capture_output=True)
    lib = cpu_decode.load(lib_path)
    for kind in KINDS:
        model = quantize_model(model_of("modern", vocab=101), kind)  # 101: rows left over after fours
        x = torch.randint(0, 101, (5, 12), generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            for B in (1, 2, 5):
                ours, ref = model.new_cache(B), model.new_cache(B)
                model(x[:B, :6], cache=ours), model(x[:B, :6], cache=ref)
                for t in range(6, 12):
                    got = CpuDecoder(model, lib).step(ours, x[:B, t])
                    want = model(x[:B, t:t + 1], cache=ref)[0][:, -1]
                    assert (got - want).abs().max() < 1e-4, (kind, B, t)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_greedy_generation_is_the_same_with_and_without_the_kernel(arch, kind, trained_run):
    from banglaslm.runfolder import load_model

    tok = load_model(trained_run).tokenizer
    model = model_of(arch, block=32, vocab=tok.vocab_size)
    with torch.no_grad():  # peaked, varied distributions: no near-ties for summation order to flip
        if arch == "gpt":
            model.tok_emb.weight.mul_(20)
        else:
            for linear in (m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)):
                linear.weight.mul_(12)
    quantize_model(model, kind)
    params = SamplingParams(max_new_tokens=150, greedy=True)  # past the block: re-prefill, then kernel again
    prompts = ["আমি", "একদিন সকালে নদীর ধারে"]
    fast = Engine(model, tok).generate(prompts, params)
    slow = Engine(model, tok, use_kernel=False).generate(prompts, params)
    assert [c.token_ids for [c] in fast] == [c.token_ids for [c] in slow]
    assert all(len(c.token_ids) > 3 * model.config.block_size for [c] in fast)


@pytest.mark.parametrize("kind", KINDS)
def test_a_short_prompt_prefilled_by_c_steps_fills_the_cache_as_pytorch_does(kind, trained_run):
    from banglaslm.generation.engine import Row
    from banglaslm.generation.stream import StreamDecoder
    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run, quantize=kind)
    engine, model = Engine(loaded.model, loaded.tokenizer), loaded.model
    fused = CpuDecoder.for_model(model)
    context = engine.encode_prompt("একদিন")[:STEP_PREFILL_BYTES // fused.weight_bytes]
    row = Row(0, 0, context, 0, StreamDecoder(loaded.tokenizer))
    with torch.inference_mode():
        ours, ref = model.new_cache(1), model.new_cache(1)
        got, want = engine.prefill(ours, [row], fused), engine.prefill(ref, [row])
    assert ours.length == ref.length == len(context) > 1
    assert (got - want).abs().max() < 1e-4
    for layer in range(model.config.n_layer):
        assert torch.allclose(ours.k[layer], ref.k[layer], atol=1e-5)
        assert torch.allclose(ours.v[layer], ref.v[layer], atol=1e-5)


def test_rows_leaving_and_samples_sharing_a_prompt_give_the_same_tokens(trained_run):
    """Through the engine: n samples (KVCache.repeat_rows), rows that stop early and leave the
    batch (KVCache.select), prompts of different lengths (padding), a penalty, past the block."""
    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run)
    prompts = ["আমি", "একদিন সকালে নদীর ধারে", "বাংলা"]
    for params in (SamplingParams(max_new_tokens=70, temperature=1.0, seed=5, n=3, stop=["।"]),
                   SamplingParams(max_new_tokens=70, greedy=True, n=2, repetition_penalty=1.3)):
        fast = Engine(loaded.model, loaded.tokenizer).generate(prompts, params)
        slow = Engine(loaded.model, loaded.tokenizer, use_kernel=False).generate(prompts, params)
        ids = [[c.token_ids for c in cs] for cs in fast]
        assert ids == [[c.token_ids for c in cs] for cs in slow]
        lengths = {len(i) for cs in ids for i in cs}
        assert len(lengths) > 1 or params.greedy  # sampled rows did leave at different steps
    assert max(lengths) > loaded.model.config.block_size  # and the last runs went past the block


def test_gelu_is_the_exact_one():
    lib = cpu_decode.library()
    lib.bslm_gelu.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    x = torch.cat([torch.linspace(-12, 12, 200_001), 1e-3 * torch.randn(10_000),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-40, 50.0, -50.0, 1e4, -1e4])])
    out = torch.empty_like(x)
    lib.bslm_gelu(x.data_ptr(), out.data_ptr(), x.numel())
    exact = torch.nn.functional.gelu(x.double())
    bound = 1e-6 * x.double().abs().clamp(min=1.0)  # float32's own rounding is 6e-8 relative
    assert bool(((out.double() - exact).abs() <= bound).all())
    # The tanh approximation (what some runtimes use) would not pass: the bound means something.
    approx = torch.nn.functional.gelu(x.double(), approximate="tanh")
    assert not bool(((approx - exact).abs() <= bound).all())


def count_steps(monkeypatch) -> list:
    calls = []
    original = CpuDecoder.step

    def spy(self, cache, tokens):
        calls.append(tokens.shape[0])
        return original(self, cache, tokens)
    monkeypatch.setattr(CpuDecoder, "step", spy)
    return calls


def test_the_engine_uses_it_only_when_it_computes_the_same_thing(trained_run, monkeypatch):
    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run)
    params = SamplingParams(max_new_tokens=5, greedy=True)
    calls = count_steps(monkeypatch)
    engine = Engine(loaded.model, loaded.tokenizer)
    engine.generate(["আমি"], params)
    prompt = len(engine.encode_prompt("আমি"))
    assert prompt * 4 <= STEP_PREFILL_BYTES  # short enough for float32 weights: prefilled by C steps
    assert calls == [1] * (prompt + 4)  # the prefill gives the first token; four decode steps
    calls.clear()
    engine.generate(["আমি " * 8], params)  # longer: one PyTorch forward, then the C steps
    assert calls == [1] * 4

    def used(engine=None, prompt="আমি") -> bool:
        calls.clear()
        (engine or Engine(loaded.model, loaded.tokenizer)).generate([prompt], params)
        return bool(calls)

    assert not used(Engine(loaded.model, loaded.tokenizer, use_kernel=False))
    hook = loaded.model.blocks[0].register_forward_hook(lambda *a: None)  # someone watches a block
    try:
        assert not used()
    finally:
        hook.remove()
    assert used()
    monkeypatch.setenv("BANGLASLM_KERNEL", "torch")
    assert not used()
    monkeypatch.delenv("BANGLASLM_KERNEL")
    half = GPT(loaded.model.config).to(torch.bfloat16).eval()  # bf16 activations: not what it computes
    assert not used(Engine(half, loaded.tokenizer))
    for kind in ("int8", "bf16"):  # quantize.py's weight-only storage: it reads that
        assert used(Engine(quantize_model(copy.deepcopy(loaded.model), kind), loaded.tokenizer))
    mixed = quantize_model(copy.deepcopy(loaded.model), "int8")
    mixed.blocks[0].mlp.up = torch.nn.Linear(*reversed(mixed.blocks[0].mlp.up.qweight.shape), bias=False)
    assert not used(Engine(mixed, loaded.tokenizer))  # one float32 matrix among int8 ones
    with torch.autocast("cpu", dtype=torch.bfloat16):  # PyTorch would compute in bf16
        assert not used()
    from torch.nn.utils import parametrize

    class Scale(torch.nn.Module):  # weights recomputed on every access, like LoRA by parametrization
        def forward(self, w):
            return 2 * w
    changed = GPT(loaded.model.config).eval()
    parametrize.register_parametrization(changed.blocks[0].mlp.up, "weight", Scale())
    assert not used(Engine(changed, loaded.tokenizer))
    monkeypatch.setattr(torch.nn.LayerNorm, "forward", lambda self, x: x)  # a class-level patch
    monkeypatch.setattr(torch.nn.RMSNorm, "forward", lambda self, x: x)
    assert not used()
    monkeypatch.undo()
    calls = count_steps(monkeypatch)
    assert used()


def test_a_missing_or_failing_compiler_falls_back_with_one_line(tmp_path, monkeypatch, capsys, trained_run):
    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run)
    params = SamplingParams(max_new_tokens=8, greedy=True)
    want = Engine(loaded.model, loaded.tokenizer).generate(["আমি"], params)[0][0].token_ids
    monkeypatch.setenv("BANGLASLM_CACHE", str(tmp_path))
    for compiler, message in (("no-such-cc", "no C compiler found"), ("false", "failed")):
        monkeypatch.setattr(cpu_decode, "_library", None)
        monkeypatch.setattr(cpu_decode, "_failure", None)
        monkeypatch.setenv("CC", compiler)
        got = Engine(loaded.model, loaded.tokenizer).generate(["আমি"], params)[0][0].token_ids
        Engine(loaded.model, loaded.tokenizer).generate(["আমি"], params)  # reported once, not per run
        err = capsys.readouterr().err
        assert got == want
        assert err.count("\n") == 1 and message in err and "PyTorch" in err
    assert list(tmp_path.rglob("*.so")) == []  # nothing half-built left behind


def test_the_build_is_cached_per_source_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("BANGLASLM_CACHE", str(tmp_path))
    first = cpu_decode.build()
    mtime = first.stat().st_mtime_ns
    assert cpu_decode.build() == first and first.stat().st_mtime_ns == mtime  # not rebuilt
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary files
    ctypes.CDLL(str(first)).bslm_decode_step  # a loadable library with the entry point
    assert first.stat().st_mode & 0o777 == 0o755  # loadable by others sharing the cache


def test_wrong_shapes_and_torch_defaults(monkeypatch):
    model = model_of("gpt")
    decoder = CpuDecoder.for_model(model)
    with torch.inference_mode():
        cache = model.new_cache(2)
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="do not fit"):  # 3 tokens for a 2-row cache
            decoder.step(cache, torch.zeros(3, dtype=torch.long))
        want = model(torch.ones(2, 1, dtype=torch.long), cache=cache)[0][:, -1]
        cache.length -= 1
        torch.set_default_dtype(torch.float64)  # buffers must stay float32 whatever the default
        try:
            got = decoder.step(cache, torch.ones(2, dtype=torch.long))
        finally:
            torch.set_default_dtype(torch.float32)
        assert got.dtype == torch.float32 and (got - want).abs().max() < 1e-4


def test_the_server_decodes_with_it(trained_run, monkeypatch):
    from fastapi.testclient import TestClient

    from banglaslm.server.app import create_app

    calls, original = [], CpuDecoder.step_rows

    def spy(self, *args):  # the server's batch calls step_rows (batching.py)
        calls.append(1)
        return original(self, *args)
    monkeypatch.setattr(CpuDecoder, "step_rows", spy)
    with TestClient(create_app(trained_run)) as client:
        r = client.post("/v1/completions", json={"prompt": "আমি", "max_tokens": 6, "temperature": 0})
        assert r.status_code == 200
        tokens = r.json()["usage"]["completion_tokens"]
    assert len(calls) == tokens - 1 or r.json()["choices"][0]["finish_reason"] == "stop"
    assert calls  # the cancel / time-out checks do not push it aside
