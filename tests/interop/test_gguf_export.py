"""GGUF export: read the file back with `gguf.GGUFReader` and check it against the run.

No llama.cpp here (benchmarks/verify_gguf_llamacpp.py runs the file in llama.cpp itself). What
these tests pin down instead:
- every tensor equals the model's weight (f32 bit for bit; f16 as the weight rounded to f16;
  q8_0 within the Q8_0 bound), with the q/k RoPE permutation undone by an index formula written
  here, not by the exporter's helper;
- a NumPy forward pass that follows llama.cpp's graphs (interleaved RoPE for `llama`,
  LayerNorm/GELU for `gpt2`) on the file's tensors gives our model's logits;
- vocabulary, merges, token types, special ids and metadata equal the run's;
- our pre-tokenizer splits real Bangla exactly like llama.cpp's qwen35 regex (taken from its C++
  source) run by the `regex` module;
- what cannot be exported is refused and nothing is written ("gpt" runs only with the GELU
  approximation allowed: llama.cpp's GPT-2 has no exact GELU).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from conftest import LITERATURE, TINY_SETTINGS  # noqa: E402

from banglaslm.config import build_config  # noqa: E402
from banglaslm.data.corpus import corpus_files  # noqa: E402
from banglaslm.errors import UserError  # noqa: E402
from banglaslm.interop.gguf_export import export_gguf, gguf_vocab  # noqa: E402
from banglaslm.model import swiglu_hidden  # noqa: E402
from banglaslm.runfolder import load_model  # noqa: E402
from banglaslm.text import normalize  # noqa: E402
from banglaslm.tokenizer import SPLIT_PATTERN, Tokenizer  # noqa: E402

T = gguf.GGMLQuantizationType
DTYPES = ("f32", "f16", "q8_0")

# LLAMA_VOCAB_PRE_TYPE_QWEN35 in llama.cpp's src/llama-vocab.cpp (llama-cpp-python 0.3.36's
# vendored copy), pasted as the C++ string literal it is there.
QWEN35_CPP_LITERAL = (
    r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+"""
    r"""|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"""
)
QWEN35 = QWEN35_CPP_LITERAL.replace("\\\\", "\\")  # what the C++ compiler makes of "\\"


@pytest.fixture(scope="module")
def runs(trained_run, trained_gpt_run, trained_untied_run) -> dict[str, Path]:
    return {"modern": trained_run, "gpt": trained_gpt_run, "untied": trained_untied_run}


@pytest.fixture(scope="module")
def files(runs, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("gguf")
    return {(arch, dt): export_gguf(run, root / f"{arch}-{dt}.gguf", dtype=dt, approximate_gelu=arch == "gpt")
            for arch, run in runs.items() for dt in DTYPES}


def field(reader, key: str):
    f = reader.fields[key]
    return f.contents()


def read_tensors(path: Path) -> dict[str, tuple[object, np.ndarray]]:
    """name -> (GGML type, float32 array in numpy (rows, cols) order)."""
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        out[t.name] = (t.tensor_type, data)
    return out


def interleave_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Expected q/k rows in llama.cpp's RoPE layout: row h*d + 2i + j holds our row
    h*d + i + j*d/2 (pairs (i, i + d/2) become neighbours)."""
    d = w.shape[0] // n_head
    index = [h * d + i + j * (d // 2) for h in range(n_head) for i in range(d // 2) for j in range(2)]
    return w[index]


def expected_tensors(run: Path) -> dict[str, torch.Tensor]:
    """The GGUF tensors the model should give, built from our state dict by name."""
    loaded = load_model(run)
    cfg, s = loaded.config.model, loaded.model.state_dict()
    C = cfg.n_embd
    out = {"token_embd.weight": s["tok_emb.weight"], "output_norm.weight": s["norm_f.weight"]}
    for i in range(cfg.n_layer):
        o, b = f"blocks.{i}.", f"blk.{i}."
        q, k, v = s[o + "attn.qkv.weight"].split(C)
        if cfg.arch == "modern":
            out |= {b + "attn_q.weight": interleave_rows(q, cfg.n_head),
                    b + "attn_k.weight": interleave_rows(k, cfg.n_head),
                    b + "attn_v.weight": v,
                    b + "attn_output.weight": s[o + "attn.proj.weight"],
                    b + "attn_norm.weight": s[o + "norm1.weight"],
                    b + "ffn_norm.weight": s[o + "norm2.weight"],
                    b + "ffn_gate.weight": s[o + "mlp.gate.weight"],
                    b + "ffn_up.weight": s[o + "mlp.up.weight"],
                    b + "ffn_down.weight": s[o + "mlp.down.weight"]}
        else:
            for ours, theirs in (("attn.qkv", "attn_qkv"), ("attn.proj", "attn_output"), ("norm1", "attn_norm"),
                                 ("norm2", "ffn_norm"), ("mlp.up", "ffn_up"), ("mlp.down", "ffn_down")):
                out[b + theirs + ".weight"] = s[o + ours + ".weight"]
                out[b + theirs + ".bias"] = s[o + ours + ".bias"]
    if cfg.arch == "gpt":
        out |= {"position_embd.weight": s["pos_emb.weight"], "output_norm.bias": s["norm_f.bias"]}
    if cfg.arch == "gpt" or not cfg.tied_head:  # a tied llama reuses token_embd; gpt2 always has its own
        out["output.weight"] = s["lm_head.weight"]
    return {k: v.detach().float() for k, v in out.items()}


def test_permutation_helpers_match_the_index_formula():
    from banglaslm.interop.gguf_export import permute_qk, unpermute_qk

    w = torch.randn(3 * 8, 5)  # 3 heads of size 8
    assert torch.equal(permute_qk(w, 3), interleave_rows(w, 3))
    assert torch.equal(unpermute_qk(permute_qk(w, 3), 3), w)
    assert not torch.equal(permute_qk(w, 3), w)


# Q8_0: blocks of 32 values x, scale d = max|x| / 127 stored as f16 (relative error <= 2^-11),
# values q = round(x / d) in [-127, 127]. So |x - q * f16(d)| <= d/2 + 127 * d * 2^-11.
Q8_BOUND = 0.5 + 127 * 2.0**-11 + 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ["modern", "gpt", "untied"])
def test_tensors_equal_the_weights(files, runs, arch, dtype):
    got = read_tensors(files[arch, dtype])
    want = expected_tensors(runs[arch])
    assert set(got) == set(want)  # tied modern: no output.weight, llama.cpp reuses token_embd
    for name, w in want.items():
        qtype, g = got[name]
        w = w.numpy()
        assert g.shape == w.shape, name
        matrix = w.ndim == 2 and name != "position_embd.weight"
        if dtype == "f32" or not matrix:
            assert qtype == T.F32, name
            np.testing.assert_array_equal(g, w, err_msg=name)
        elif dtype == "f16":
            assert qtype == T.F16, name
            np.testing.assert_array_equal(g, w.astype(np.float16).astype(np.float32), err_msg=name)
        else:
            assert qtype == T.Q8_0, name  # every row length in these runs is a multiple of 32
            blocks_w, blocks_g = w.reshape(-1, 32), g.reshape(-1, 32)
            bound = Q8_BOUND * np.abs(blocks_w).max(axis=1, keepdims=True) / 127
            assert (np.abs(blocks_g - blocks_w) <= bound + 1e-12).all(), name
            # and it is really quantized, not stored exactly
            assert not np.array_equal(g, w), name


def llama_cpp_style_logits(t: dict[str, np.ndarray], meta: dict, ids: list[int]) -> np.ndarray:
    """Logits from the GGUF tensors, computed the way llama.cpp's graphs do (float64)."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    n_head, eps, L = meta["heads"], meta["eps"], meta["layers"]
    x = t["token_embd.weight"][ids]
    T_, C = x.shape
    d = C // n_head
    pos = np.arange(T_)
    if meta["arch"] == "gpt2":
        x = x + t["position_embd.weight"][:T_]

    def norm(v, w, b=None):
        if b is None:  # RMSNorm
            return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w
        mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + eps) * w + b

    def rope_interleaved(v):  # (T, H, d): rotate (v[2i], v[2i+1]) by pos * base^(-2i/d)
        theta = pos[:, None] * meta["rope_base"] ** (-np.arange(0, d, 2) / d)[None, :]
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        a, b = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    mask = np.triu(np.full((T_, T_), -np.inf), 1)
    for i in range(L):
        b = f"blk.{i}."
        h = norm(x, t[b + "attn_norm.weight"], t.get(b + "attn_norm.bias"))
        if meta["arch"] == "gpt2":
            q, k, v = np.split(h @ t[b + "attn_qkv.weight"].T + t[b + "attn_qkv.bias"], 3, axis=-1)
        else:
            q, k, v = (h @ t[b + f"attn_{n}.weight"].T for n in "qkv")
        q, k, v = (m.reshape(T_, n_head, d) for m in (q, k, v))
        if meta["arch"] == "llama":
            q, k = rope_interleaved(q), rope_interleaved(k)
        att = np.einsum("thd,shd->hts", q, k) / math.sqrt(d) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = np.einsum("hts,shd->thd", att, v).reshape(T_, C) @ t[b + "attn_output.weight"].T
        x = x + (y + t[b + "attn_output.bias"] if meta["arch"] == "gpt2" else y)
        h = norm(x, t[b + "ffn_norm.weight"], t.get(b + "ffn_norm.bias"))
        if meta["arch"] == "gpt2":
            u = h @ t[b + "ffn_up.weight"].T + t[b + "ffn_up.bias"]
            u = 0.5 * u * (1 + np.vectorize(math.erf)(u / math.sqrt(2)))  # exact GELU, as ours
            x = x + u @ t[b + "ffn_down.weight"].T + t[b + "ffn_down.bias"]
        else:
            g, u = h @ t[b + "ffn_gate.weight"].T, h @ t[b + "ffn_up.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ t[b + "ffn_down.weight"].T
    x = norm(x, t["output_norm.weight"], t.get("output_norm.bias"))
    return x @ t.get("output.weight", t["token_embd.weight"]).T


@pytest.mark.parametrize("arch", ["modern", "gpt", "untied"])
def test_file_computes_our_logits(files, runs, arch):
    """The f32 file, run as llama.cpp's graph would (interleaved RoPE on the permuted q/k),
    gives our model's logits: the layout change is exact."""
    path = files[arch, "f32"]
    reader = gguf.GGUFReader(path)
    a = field(reader, "general.architecture")
    eps_key = f"{a}.attention.layer_norm_rms_epsilon" if a == "llama" else f"{a}.attention.layer_norm_epsilon"
    meta = {"arch": a, "heads": field(reader, f"{a}.attention.head_count"), "eps": field(reader, eps_key),
            "layers": field(reader, f"{a}.block_count"),
            "rope_base": field(reader, f"{a}.rope.freq_base") if a == "llama" else None}
    tensors = {k: v for k, (_, v) in read_tensors(path).items()}
    loaded = load_model(runs[arch])
    tok = loaded.tokenizer
    ids = [tok.eod_id] + tok.encode(corpus_files()[0].read_text(encoding="utf-8"))
    ids = ids[:loaded.config.model.block_size]
    want = loaded.model(torch.tensor([ids]))[0][0].double().detach().numpy()
    got = llama_cpp_style_logits(tensors, meta, ids)
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("arch", ["modern", "gpt"])
def test_metadata_and_vocabulary(files, runs, arch):
    run = runs[arch]
    cfg = load_model(run).config.model
    spec = json.loads((run / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    eod = vocab["<|endoftext|>"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    assert merges and len(vocab) == cfg.vocab_size
    for dtype in DTYPES:
        r = gguf.GGUFReader(files[arch, dtype])
        a = "llama" if arch == "modern" else "gpt2"
        assert field(r, "general.architecture") == a
        assert field(r, f"{a}.context_length") == cfg.block_size
        assert field(r, f"{a}.embedding_length") == cfg.n_embd
        assert field(r, f"{a}.block_count") == cfg.n_layer
        assert field(r, f"{a}.attention.head_count") == cfg.n_head
        assert field(r, f"{a}.attention.head_count_kv") == cfg.n_head
        if arch == "modern":
            assert field(r, "llama.feed_forward_length") == swiglu_hidden(cfg.n_embd)
            assert field(r, "llama.rope.freq_base") == pytest.approx(cfg.rope_theta)
            assert field(r, "llama.rope.dimension_count") == cfg.n_embd // cfg.n_head
            assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps)
        else:
            assert field(r, "gpt2.feed_forward_length") == 4 * cfg.n_embd
            assert field(r, "gpt2.attention.layer_norm_epsilon") == pytest.approx(cfg.norm_eps)
        assert field(r, "general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7}[dtype]
        assert field(r, "tokenizer.ggml.model") == "gpt2"
        assert field(r, "tokenizer.ggml.pre") == "qwen35"
        assert field(r, "banglaslm.normalization") == "bn-1"
        tokens = field(r, "tokenizer.ggml.tokens")
        assert tokens == sorted(vocab, key=vocab.get)
        assert field(r, "tokenizer.ggml.merges") == merges
        types = field(r, "tokenizer.ggml.token_type")
        assert types == [3 if i == eod else 1 for i in range(len(vocab))]  # 3 = CONTROL
        assert field(r, "tokenizer.ggml.bos_token_id") == eod
        assert field(r, "tokenizer.ggml.eos_token_id") == eod
        assert field(r, "tokenizer.ggml.add_bos_token") is True  # llama.cpp puts it before a prompt, as we do


def test_storage_types():
    """Matrices follow dtype; norms, biases and the position table stay f32; a row length that is
    not a multiple of Q8_0's 32-value block falls back to f16."""
    from banglaslm.interop.gguf_export import storage_type

    assert storage_type("blk.0.ffn_up.weight", (96, 64), "q8_0") == T.Q8_0
    assert storage_type("blk.0.ffn_up.weight", (96, 48), "q8_0") == T.F16
    assert storage_type("blk.0.ffn_up.weight", (96, 64), "f16") == T.F16
    assert storage_type("blk.0.ffn_up.weight", (96, 64), "f32") == T.F32
    for name, shape in (("blk.0.attn_norm.weight", (64,)), ("blk.0.attn_qkv.bias", (192,)),
                        ("position_embd.weight", (128, 64)), ("output_norm.weight", (64,))):
        assert storage_type(name, shape, "q8_0") == T.F32, name


def test_padded_model_rows_get_unused_tokens(trained_run):
    tok = load_model(trained_run).tokenizer
    v = gguf_vocab(tok, tok.vocab_size + 3)
    assert v["tokens"][:tok.vocab_size] == [tok.hf.id_to_token(i) for i in range(tok.vocab_size)]
    assert len(v["tokens"]) == len(set(v["tokens"])) == tok.vocab_size + 3
    assert v["types"][tok.vocab_size:] == [int(gguf.TokenType.UNUSED)] * 3
    with pytest.raises(UserError, match="only"):
        gguf_vocab(tok, tok.vocab_size - 1)


# ---- the pre-tokenizer is llama.cpp's qwen35 -------------------------------------------------
def qwen35_split(text: str) -> list[str]:
    """llama.cpp's qwen35 split, run by the `regex` module: the matches, and any text between
    them as its own piece (llama.cpp's "no match" case)."""
    regex = pytest.importorskip("regex")  # \p{L} / \p{M} classes, which `re` lacks
    pieces, end = [], 0
    for m in regex.finditer(QWEN35, text):
        if m.start() > end:
            pieces.append(text[end:m.start()])
        pieces.append(m.group())
        end = m.end()
    if end < len(text):
        pieces.append(text[end:])
    return pieces


def our_split(tok: Tokenizer, text: str) -> list[str]:
    """Our tokenizer's own pre-tokenizer (from the run's tokenizer.json), as pieces of `text`."""
    return [text[a:b] for _, (a, b) in tok.hf.pre_tokenizer.pre_tokenize_str(text)]


def test_split_pattern_is_the_cpp_one():
    assert SPLIT_PATTERN == QWEN35


TRICKY = ("He's here, they'LL go; it'S 1999!\r\n\n  \t ক্ষ র\u200d্য ক্\u200cষ ১২৩ ৳৫০০। \"উদ্ধৃতি\"…  \n"
          "  শেষ\u09fe ॥ ఈ 😀😀 a\u0301b  ")


def test_split_matches_qwen35_on_tricky_text(trained_run):
    tok = load_model(trained_run).tokenizer
    for text in (TRICKY, normalize(TRICKY)):
        assert "".join(qwen35_split(text)) == text
        assert our_split(tok, text) == qwen35_split(text)


def _check_split(tok: Tokenizer, texts: list[str]) -> int:
    n = 0
    for text in texts:
        ours, theirs = our_split(tok, text), qwen35_split(text)
        if ours != theirs:
            i = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
            pytest.fail(f"split differs at piece {i}: ours {ours[i:i + 3]!r}, qwen35 {theirs[i:i + 3]!r}")
        n += len(ours)
    return n


def test_split_matches_qwen35_on_embedded_corpus(trained_run):
    tok = load_model(trained_run).tokenizer
    texts = [normalize(p.read_text(encoding="utf-8")) for p in corpus_files()]
    assert _check_split(tok, texts) > 1000


def test_split_matches_qwen35_on_real_literature(trained_run):
    if not LITERATURE.is_dir():
        pytest.skip(f"shared Bangla corpus not found at {LITERATURE}")
    tok = load_model(trained_run).tokenizer
    books = sorted(LITERATURE.glob("*.txt"))[:12]
    texts = [normalize(b.read_text(encoding="utf-8")[:40_000]) for b in books]
    assert _check_split(tok, texts) > 10_000


# ---- refusals --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def char_run(tmp_path_factory, small_books) -> Path:
    from banglaslm.data.prepare import prepare
    from banglaslm.training.trainer import train

    root = tmp_path_factory.mktemp("char")
    text = root / "t.txt"
    text.write_text(small_books[0].read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    prepare([str(text)], root / "d", tokenizer="char", doc_split="paragraph", progress=False)
    settings = {**TINY_SETTINGS, "train.max_iters": 2, "train.warmup_iters": 1, "train.eval_interval": 1,
                "train.log_interval": 1}
    train(root / "d", root / "r", build_config(overrides=settings), progress=False)
    return root / "r"


def test_char_tokenizer_is_refused_and_nothing_written(char_run, tmp_path):
    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(UserError, match="character tokenizer") as info:
        export_gguf(char_run, out)
    assert "\n" not in str(info.value)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_foreign_tokenizer_is_refused(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    hf = HF(models.WordPiece({"[UNK]": 0, "</s>": 1, "ক": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["</s>"])
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    tok = Tokenizer.from_file(path)
    with pytest.raises(UserError, match="foreign tokenizer"):
        gguf_vocab(tok, tok.vocab_size)


def test_gpt_needs_the_gelu_approximation_allowed(trained_gpt_run, tmp_path):
    """llama.cpp's GPT-2 GELU is the tanh approximation; a "gpt" run is exported only when asked."""
    with pytest.raises(UserError, match="GELU") as info:
        export_gguf(trained_gpt_run, tmp_path / "g.gguf")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(trained_run, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    for overwrite in (False, True):  # overwriting replaces only a GGUF file: not offered for another
        with pytest.raises(UserError, match="not a GGUF file"):
            export_gguf(trained_run, out, overwrite=overwrite)
    assert out.read_bytes() == b"keep me"
    out.unlink()
    export_gguf(trained_run, out)
    with pytest.raises(UserError, match="already exists; choose another output file, or add `overwrite`"):
        export_gguf(trained_run, out)
    assert export_gguf(trained_run, out, overwrite=True) == out
    assert out.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no temp file left


def test_bad_dtype_and_folder_output(trained_run, tmp_path):
    with pytest.raises(UserError, match="dtype"):
        export_gguf(trained_run, tmp_path / "m.gguf", dtype="q4_0")
    with pytest.raises(UserError, match="is a folder; give the path of the .gguf file"):
        export_gguf(trained_run, tmp_path)
    with pytest.raises(UserError, match="names a folder \\(it ends in a slash\\)"):  # not made yet: "is a folder" was untrue
        export_gguf(trained_run, f"{tmp_path / 'out'}/")
    assert list(tmp_path.iterdir()) == []
