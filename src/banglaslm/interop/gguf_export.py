"""Export a run as one GGUF file that llama.cpp (and what is built on it) runs as is.

"modern" runs become llama.cpp's `llama` (q/k rows permuted to its interleaved RoPE layout,
a tied head left to its token-embedding fallback, an untied one written as `output`); "gpt" runs become `gpt2` only when the
caller accepts llama.cpp's tanh-approximated GELU. The tokenizer becomes llama.cpp's
byte-level BPE with pre-tokenizer `qwen35`, exactly our split. llama.cpp does not run our
normalization: normalize prompts first. docs/interop.md has the mapping and its checks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from ..chat_template import jinja_template
from ..config import ModelConfig, Opt
from ..errors import UserError, bad_param
from ..fileio import atomic_path, exclusive
from ..model import swiglu_hidden
from ..runfolder import Which, load_model
from ..text import NORMALIZATION
from ..tokenizer import SPLIT_PATTERN, Tokenizer
from .hf_export import check_exportable, float32_state
from .hf_names import to_hf

DTYPES = ("f32", "f16", "q8_0")
PRE_TOKENIZER = "qwen35"
GELU_NOTE = ("llama.cpp's GPT-2 uses tanh-approximated GELU through an f16 table where 'gpt' models "
             "use exact GELU: logits differ by ~1e-3 and near-ties can flip (see BENCHMARKS.md)")
Q8_0_NOTE = ("llama-cpp-python 0.3.36 crashed (segmentation fault) here on a CPU with AVX512_BF16/AMX when "
             "it evaluated several q8_0 tokens in one batch, also on files llama.cpp quantized itself; if "
             "yours does, load with n_batch=1 or export --gguf-type f16 (docs/interop.md)")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF export needs the `gguf` package: pip install gguf") from None
    return gguf


# ---- weights --------------------------------------------------------------------------------
def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a q/k projection from "rotate half" to llama.cpp's interleaved RoPE layout:
    per head, row i -> 2i and row i + d/2 -> 2i + 1."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of `permute_qk`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> GGUF tensor names (llama.cpp's), float32, in our (out, in) layout.

    Goes through the Hugging Face names (`hf_names`), the same mapping convert_hf_to_gguf.py
    applies to a Llama / GPT-2 checkpoint."""
    hf = to_hf(state, cfg)
    out: dict[str, torch.Tensor] = {}
    if cfg.arch == "modern":
        out["token_embd.weight"] = hf["model.embed_tokens.weight"]  # also the output when tied
        for i in range(cfg.n_layer):
            p, b = f"model.layers.{i}.", f"blk.{i}."
            out[b + "attn_norm.weight"] = hf[p + "input_layernorm.weight"]
            out[b + "attn_q.weight"] = permute_qk(hf[p + "self_attn.q_proj.weight"], cfg.n_head)
            out[b + "attn_k.weight"] = permute_qk(hf[p + "self_attn.k_proj.weight"], cfg.n_head)
            out[b + "attn_v.weight"] = hf[p + "self_attn.v_proj.weight"]
            out[b + "attn_output.weight"] = hf[p + "self_attn.o_proj.weight"]
            out[b + "ffn_norm.weight"] = hf[p + "post_attention_layernorm.weight"]
            for name in ("gate", "up", "down"):
                out[b + f"ffn_{name}.weight"] = hf[p + f"mlp.{name}_proj.weight"]
        out["output_norm.weight"] = hf["model.norm.weight"]
        if not cfg.tied_head:
            out["output.weight"] = hf["lm_head.weight"]
    else:
        out["token_embd.weight"] = hf["transformer.wte.weight"]
        out["position_embd.weight"] = hf["transformer.wpe.weight"]
        for i in range(cfg.n_layer):
            p, b = f"transformer.h.{i}.", f"blk.{i}."
            pairs = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
                     "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
            for a, g in pairs.items():
                w = hf[p + a + ".weight"]
                out[b + g + ".weight"] = w if a.startswith("ln_") else w.t()  # Conv1D back to (out, in)
                out[b + g + ".bias"] = hf[p + a + ".bias"]
        out["output_norm.weight"] = hf["transformer.ln_f.weight"]
        out["output_norm.bias"] = hf["transformer.ln_f.bias"]
        # llama.cpp's gpt2 reads the output matrix (a tied one written twice, as its converter does)
        out["output.weight"] = hf["transformer.wte.weight" if cfg.tied_head else "lm_head.weight"]
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def storage_type(name: str, shape: tuple[int, ...], dtype: str):
    """The GGML type a tensor is stored as under `dtype` (convert_hf_to_gguf.py's rules)."""
    gguf = _gguf()
    T = gguf.GGMLQuantizationType
    if dtype == "f32" or len(shape) < 2 or not name.endswith(".weight") or "_norm." in name \
            or name == "position_embd.weight":
        return T.F32
    if dtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] == 0:
        return T.Q8_0
    return T.F16


def _encode(t: torch.Tensor, qtype) -> np.ndarray:
    gguf = _gguf()
    data = t.numpy().astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F32:
        return data
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


# ---- tokenizer ------------------------------------------------------------------------------
def _split_pattern(pre: dict[str, Any] | None) -> str | None:
    """Our pre-tokenizer's split regex if `pre` is exactly ours (Split + ByteLevel), else None."""
    if not pre or pre.get("type") != "Sequence" or len(pre.get("pretokenizers", [])) != 2:
        return None
    split, byte = pre["pretokenizers"]
    if split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert"):
        return None
    if byte.get("type") != "ByteLevel" or byte.get("add_prefix_space") or byte.get("use_regex"):
        return None
    return (split.get("pattern") or {}).get("Regex")


def gguf_vocab(tokenizer: Tokenizer, n_vocab: int) -> dict[str, Any]:
    """tokens, merges, token types and special ids for GGUF's "gpt2" (byte-level BPE) tokenizer.

    `n_vocab` (the model's rows) may exceed the tokenizer's size; the extra rows get unused
    placeholder tokens, as convert_hf_to_gguf.py does for padded vocabularies."""
    gguf = _gguf()
    if tokenizer.kind != "bpe":
        what = "a character tokenizer" if tokenizer.kind == "char" else f"a foreign tokenizer ({tokenizer.kind})"
        raise UserError(f"cannot export {what} to GGUF: this export writes banglaslm's own byte-level BPE only (its "
                        "split rule is the one llama.cpp is told to use); export to Hugging Face instead (`banglaslm "
                        "export RUN --format hf`), or, for a model trained here, prepare the data with `--tokenizer bpe` and train again")
    spec = json.loads(tokenizer.hf.to_str())
    model = spec["model"]
    if spec.get("normalizer") or _split_pattern(spec.get("pre_tokenizer")) != SPLIT_PATTERN:
        raise UserError("cannot export to GGUF: this tokenizer.json's normalizer / pre-tokenizer is not "
                        "banglaslm's, so llama.cpp would split text differently")
    if model.get("dropout") or model.get("byte_fallback") or model.get("ignore_merges") \
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise UserError("cannot export to GGUF: the BPE model uses options (dropout, byte fallback, "
                        "ignore_merges, subword affixes) llama.cpp's BPE does not have")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    if any(not t.get("special") for t in added.values()):
        raise UserError("cannot export to GGUF: the tokenizer has non-special added tokens, which "
                        "llama.cpp would match inside text where ours does not")
    size = tokenizer.vocab_size
    if size > n_vocab:
        raise UserError(f"cannot export: the tokenizer has {size} tokens but the model only {n_vocab} rows")
    tokens = [tokenizer.hf.id_to_token(i) for i in range(size)]
    if any(t is None for t in tokens):
        raise UserError("cannot export to GGUF: the tokenizer's ids are not contiguous")
    types = [int(gguf.TokenType.CONTROL if i in added else gguf.TokenType.NORMAL) for i in range(size)]
    for i in range(size, n_vocab):  # model rows no token maps to
        tokens.append(f"[PAD{i}]")
        types.append(int(gguf.TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "merges": merges, "types": types, "eod_id": tokenizer.eod_id}


# ---- export ---------------------------------------------------------------------------------
def check_gguf_exportable(cfg: ModelConfig, approximate_gelu: bool = False) -> None:
    """Raise UserError for a config llama.cpp's `llama` / `gpt2` cannot compute exactly
    (a "gpt" run only with `approximate_gelu`, see the module docstring)."""
    check_exportable(cfg)  # known fields only, divisible heads, even RoPE head size, eps/theta > 0
    if cfg.arch == "gpt" and not approximate_gelu:
        raise UserError("cannot export a 'gpt' run to GGUF exactly: llama.cpp's GPT-2 uses tanh-approximated "
                        "GELU where the model uses exact GELU (logits differ by ~1e-3, near-ties can flip); "
                        "allow the approximation with `approximate_gelu`, or export a 'modern' run")
    if cfg.block_size <= 0 or cfg.n_layer <= 0:
        raise UserError(f"cannot export: block_size ({cfg.block_size}) and n_layer ({cfg.n_layer}) must be > 0")
    # dropout only acts in training; llama.cpp has none and needs none.


def _write_metadata(w, cfg: ModelConfig, dtype: str, name: str) -> None:
    gguf = _gguf()
    w.add_name(name)
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head)
    if cfg.arch == "modern":
        w.add_feed_forward_length(swiglu_hidden(cfg.n_embd))
        w.add_rope_dimension_count(cfg.n_embd // cfg.n_head)
        w.add_rope_freq_base(float(cfg.rope_theta))
        w.add_layer_norm_rms_eps(float(cfg.norm_eps))
        w.add_vocab_size(cfg.vocab_size)
    else:
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_layer_norm_eps(float(cfg.norm_eps))
    F = gguf.LlamaFileType
    w.add_file_type({"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "q8_0": F.MOSTLY_Q8_0}[dtype])
    if dtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4)


def export_gguf(
    run_dir: str | Path, out_path: str | Path,
    dtype: Annotated[str, Opt("how weight matrices are stored (norms stay f32)", DTYPES)] = "f16",
    which: Which = "best",
    overwrite: Annotated[bool, Opt("replace an earlier export there (hf, peft: an export folder of that format; "
                                    "gguf: a GGUF file)")] = False,
    *,
    approximate_gelu: Annotated[bool, Opt("for the course GPT ('gpt' arch): accept llama.cpp's "
                                          "tanh-approximated GELU (not exact)")] = False,
) -> Path:
    """Write the run's `which` checkpoint as one GGUF file for llama.cpp; returns `out_path`.

    "modern" runs become GGUF `llama`; "gpt" runs become `gpt2` only with `approximate_gelu=True`
    (llama.cpp's GELU is not ours: `GELU_NOTE`). Raises UserError, writing nothing, for what
    llama.cpp cannot represent.
    """
    if dtype not in DTYPES:
        raise bad_param("dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(out_path)
    if out.is_dir() or str(out_path).endswith(("/", os.sep)):  # "out/" names a folder, even one not made yet
        named = "is a folder" if out.is_dir() else "names a folder (it ends in a slash)"
        raise UserError(f"{out_path} {named}; give the path of the .gguf file to write, e.g. {out / 'model.gguf'}")
    if out.exists() and _magic(out) != b"GGUF":
        raise UserError(f"{out} exists and is not a GGUF file; overwriting replaces only a GGUF file: choose another path")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another output file, or add `overwrite` to replace it")
    gguf = _gguf()
    loaded = load_model(run_dir, which)
    cfg, tok = loaded.config.model, loaded.tokenizer
    vocab = gguf_vocab(tok, cfg.vocab_size)  # first: no flag helps a tokenizer it cannot write
    check_gguf_exportable(cfg, approximate_gelu)
    tensors = gguf_tensors(float32_state(loaded.model), cfg)

    with exclusive(out, "GGUF file"), atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama" if cfg.arch == "modern" else "gpt2")
        _write_metadata(w, cfg, dtype, Path(run_dir).resolve().name)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(PRE_TOKENIZER)
        w.add_token_list(vocab["tokens"])
        w.add_token_merges(vocab["merges"])
        w.add_token_types(vocab["types"])
        w.add_bos_token_id(vocab["eod_id"])
        w.add_eos_token_id(vocab["eod_id"])
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_chat_template(jinja_template())
        # Provenance; llama.cpp ignores keys it does not know.
        w.add_string("banglaslm.normalization", NORMALIZATION)
        w.add_string("banglaslm.tokenizer_sha256", tok.sha256)
        w.add_string("banglaslm.checkpoint", loaded.checkpoint.name)
        w.add_uint32("banglaslm.iter", loaded.iteration)
        for name, t in tensors.items():
            qtype = storage_type(name, tuple(t.shape), dtype)
            w.add_tensor(name, _encode(t, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out
