"""Export a run to a Hugging Face checkpoint that `transformers` loads with no custom code.

    export_hf(run_dir, out_dir) writes OUT_DIR/
      config.json              LlamaConfig ("modern") or GPT2Config ("gpt")
      model.safetensors        float32 weights under Hugging Face names
      generation_config.json   bos = eos = the end-of-document id; sampling like `banglaslm generate`
      tokenizer.json           the run's tokenizer, with our text normalization as its `normalizer`
      tokenizer_config.json    PreTrainedTokenizerFast, no BOS/EOS added, literal specials stay text
      special_tokens_map.json

so that `AutoModelForCausalLM.from_pretrained(OUT_DIR)` and `AutoTokenizer.from_pretrained(OUT_DIR)`
work offline. Writing needs only torch, safetensors and tokenizers; `transformers` is needed only
to *use* the result.

Architectures
- "modern" -> `LlamaForCausalLM`. Our RoPE is Llama's "rotate half" layout with the same inverse
  frequencies, so the fused `qkv` is just cut into q_proj/k_proj/v_proj (no permutation);
  RMSNorm, SwiGLU (intermediate_size = `swiglu_hidden(n_embd)`), no biases, tied head. The tied
  matrix is stored once, as `model.embed_tokens.weight`.
- "gpt" -> `GPT2LMHeadModel` with `activation_function="gelu"` (exact erf GELU, what our MLP
  uses; GPT-2's own "gelu_new" is the tanh approximation) and `tie_word_embeddings=false`:
  our head is its own matrix, and transformers only re-ties `lm_head` to `wte` when that key is
  true. GPT-2's `Conv1D` stores weights as (in, out), so every matrix is transposed.
  Dropouts are written as 0 (they only matter in training).

Faithful or refuse: anything the target class cannot represent raises `UserError` before a byte
is written; the folder is built under a temporary name and renamed into place at the end, so a
failure leaves nothing behind. After writing the weights they are mapped back and compared bit
for bit with the checkpoint.

Known differences from `banglaslm generate` / `eval`
- `banglaslm generate` conditions every prompt on the end-of-document token (prepended). The HF
  tokenizer adds nothing (`add_bos_token=false`, as the tokenizer ids must equal ours); prepend
  `tokenizer.bos_token_id` yourself to get the same continuation.
- Our model refuses sequences longer than block_size; HF Llama will run past
  `max_position_embeddings` (positions it was never trained on) and GPT-2 fails with an index
  error there.

Normalization
`banglaslm.normalize.normalize()` runs in Python before every encode. The exported tokenizer.json
carries an equivalent `normalizers.Sequence`, step for step: "\\r\\n" -> "\\n"; NFC; the nukta
recomposition of য় ড় ঢ়; old-style khanda-ta (ত + hasanta + ZWJ) -> ৎ; the same code-point
classes as `normalize`'s translation table (line breaks -> "\\n", tab and Unicode spaces -> " ",
other control / format characters except ZWNJ/ZWJ removed), listed explicitly from Python's
`unicodedata` at export time; runs of joiners reduced to their first; joiners not touching a
hasanta removed; space runs collapsed, spaces around line breaks dropped, 3+ line breaks -> 2;
strip. The tests check that it gives the same text and ids as ours on the embedded corpus, on
deliberately messy text and on random strings. Residual difference: `tokenizers`' NFC uses
older Unicode tables than Python's. For Bangla the only affected code point is U+09FE BENGALI
SANDHI MARK (Unicode 10), which its NFC does not move behind a nukta / hasanta; extra Replace
steps finish that ordering (exact for up to four such marks in a row). About 70 combining marks of
other scripts added in Unicode 10-14 (e.g. U+1AC0..U+1ACE, U+0898..U+089F) are still not
reordered, so text mixing them with other combining marks can tokenize differently. The explicit
character classes are Python's `unicodedata` at export time. A tokenizer that already had a
normalizer keeps it, after ours.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import unicodedata
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file

from .config import ModelConfig
from .errors import UserError
from .model import swiglu_hidden
from .normalize import HASANTA, NORMALIZATION, ZWJ, ZWNJ
from .runfolder import load_model
from .tokenizer import UNK, Tokenizer

HF_WEIGHTS = "model.safetensors"


# ---- normalization as a tokenizers normalizer -----------------------------------------------
def _ranges(cps: tuple[int, ...]) -> str:
    """A regex character-class body for code points `cps`, as literal `a-b` ranges (literal
    characters read the same in every regex dialect that consumes tokenizer.json)."""
    out, cps = [], sorted(cps)
    start = prev = cps[0]
    for cp in cps[1:] + [None]:
        if cp is not None and cp == prev + 1:
            prev = cp
            continue
        out.append(chr(start) if start == prev else f"{chr(start)}-{chr(prev)}")
        if cp is not None:
            start = prev = cp
    return "".join(out)


@functools.lru_cache(maxsize=1)
def _translation_classes() -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Code points normalize() maps to newline / space / nothing (its translation table)."""
    newline, space, drop = [], [], []
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if ch == "\n":
            continue
        cat = unicodedata.category(ch)
        if ch in "\r\u2028\u2029\x85\x0b\x0c":
            newline.append(cp)
        elif ch == "\t" or cat == "Zs":
            space.append(cp)
        elif cat == "Cc" or (cat == "Cf" and ch not in (ZWNJ, ZWJ)):
            drop.append(cp)
    return tuple(newline), tuple(space), tuple(drop)


def _replace(pattern: str, content: str, regex: bool = True) -> dict[str, Any]:
    return {"type": "Replace", "pattern": {"Regex" if regex else "String": pattern}, "content": content}


def bangla_normalizer() -> dict[str, Any]:
    """`normalize()` (policy NORMALIZATION) as a tokenizer.json `normalizer` (a Sequence)."""
    newline, space, drop = _translation_classes()
    hasanta, joiners = HASANTA, ZWNJ + ZWJ
    steps = [
        _replace("\r\n", "\n", regex=False),
        {"type": "NFC"},
        # tokenizers' NFC tables predate U+09FE (BENGALI SANDHI MARK, ccc 230) and leave it
        # in front of a nukta (ccc 7) / hasanta (ccc 9); finish the canonical ordering here.
        *[_replace(a + b, b + a, regex=False) for _ in range(4)
          for a, b in (("\u09fe", "\u09bc"), ("\u09fe", "\u09cd"), ("\u09cd", "\u09bc"))],
        _replace("\u09a1\u09bc", "\u09dc", regex=False),  # ড় ঢ় য় recomposed
        _replace("\u09a2\u09bc", "\u09dd", regex=False),
        _replace("\u09af\u09bc", "\u09df", regex=False),
        _replace("\u09a4\u09cd\u200d", "\u09ce", regex=False),  # old khanda-ta
        _replace(f"[{_ranges(newline)}]", "\n"),
        _replace(f"[{_ranges(space)}]", " "),
        _replace(f"[{_ranges(drop)}]", ""),
        # normalize() keeps the first joiner of a run; Replace has no back-references, so one
        # rule per leading joiner (the ZWNJ rule cannot break a ZWJ-led run: see the tests).
        _replace(f"{ZWNJ}[{joiners}]+", ZWNJ),
        _replace(f"{ZWJ}[{joiners}]+", ZWJ),
        _replace(f"(?<!{hasanta})[{joiners}]+(?![{joiners}]*{hasanta})", ""),
        _replace(" {2,}", " "),
        _replace(" *\n *", "\n"),
        _replace("\n{3,}", "\n\n"),
        {"type": "Strip", "strip_left": True, "strip_right": True},
    ]
    return {"type": "Sequence", "normalizers": steps}


def _with_normalizer(spec: dict[str, Any]) -> dict[str, Any]:
    spec = dict(spec)
    ours = bangla_normalizer()
    existing = spec.get("normalizer")
    if existing:
        ours["normalizers"].append(existing)
    spec["normalizer"] = ours
    # Our encode never applies the post-processor (add_special_tokens=False).
    spec["post_processor"] = None
    return spec


def strip_bangla_normalizer(spec: dict[str, Any], steps_added: int | None = None) -> dict[str, Any]:
    """Undo `_with_normalizer`'s normalizer (import: our Python normalize() runs anyway).

    `steps_added` is what the exporting banglaslm recorded in config.json (its normalizer may
    differ from this version's); without it, only this version's exact normalizer is removed."""
    norm = spec.get("normalizer") or {}
    steps = norm.get("normalizers") if norm.get("type") == "Sequence" else None
    ours = bangla_normalizer()["normalizers"]
    n = len(ours) if steps_added is None else steps_added
    if not steps or n <= 0 or len(steps) < n:
        return spec
    if steps_added is None and json.dumps(steps[:n]) != json.dumps(ours):
        return spec
    spec = dict(spec)
    rest = steps[n:]
    spec["normalizer"] = rest[0] if len(rest) == 1 else ({"type": "Sequence", "normalizers": rest} if rest else None)
    return spec


# ---- configs --------------------------------------------------------------------------------
# ModelConfig fields whose meaning export knows; a field added later must be taught here
# before a run that changes it from its default can be exported.
_KNOWN_FIELDS = {"arch", "n_layer", "n_head", "n_embd", "block_size", "dropout", "vocab_size",
                 "rope_theta", "norm_eps"}


def check_exportable(cfg: ModelConfig) -> None:
    """Raise UserError for a config the HF classes cannot represent exactly."""
    for f in dataclasses.fields(cfg):
        if f.name not in _KNOWN_FIELDS and getattr(cfg, f.name) != f.default:
            raise UserError(f"cannot export: model.{f.name}={getattr(cfg, f.name)!r} has no Hugging Face "
                            "equivalent that export knows of")
    if cfg.arch not in ("gpt", "modern"):
        raise UserError(f"cannot export arch '{cfg.arch}': only 'modern' (Llama) and 'gpt' (GPT-2) are supported")
    if cfg.vocab_size <= 0 or cfg.n_head <= 0 or cfg.n_embd % cfg.n_head:
        raise UserError(f"cannot export: n_embd ({cfg.n_embd}) must divide by n_head ({cfg.n_head}) "
                        f"and vocab_size ({cfg.vocab_size}) must be set")
    if cfg.arch == "modern" and (cfg.n_embd // cfg.n_head) % 2:
        raise UserError("cannot export: RoPE needs an even head size (n_embd / n_head)")
    if not cfg.norm_eps > 0 or (cfg.arch == "modern" and not cfg.rope_theta > 0):
        raise UserError("cannot export: norm_eps and rope_theta must be > 0")


def hf_config(cfg: ModelConfig, eod_id: int, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json for LlamaForCausalLM ("modern") or GPT2LMHeadModel ("gpt")."""
    check_exportable(cfg)
    common = {"vocab_size": cfg.vocab_size, "bos_token_id": eod_id, "eos_token_id": eod_id,
              "pad_token_id": None, "initializer_range": 0.02, "use_cache": True,
              "torch_dtype": "float32", "dtype": "float32"}
    if cfg.arch == "modern":
        out = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": cfg.n_embd, "intermediate_size": swiglu_hidden(cfg.n_embd),
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_head, "head_dim": cfg.n_embd // cfg.n_head,
            "hidden_act": "silu", "max_position_embeddings": cfg.block_size,
            "rms_norm_eps": cfg.norm_eps,
            # transformers 5 reads rope_parameters; 4.x and converters read rope_theta.
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "rope_theta": cfg.rope_theta,
            "tie_word_embeddings": True, "attention_bias": False, "attention_dropout": 0.0,
            "mlp_bias": False, "pretraining_tp": 1, **common,
        }
    else:
        out = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_inner": 4 * cfg.n_embd,
            "activation_function": "gelu", "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "add_cross_attention": False,
            "tie_word_embeddings": False, **common,
        }
    if provenance:
        out["banglaslm"] = provenance
    return out


# ---- weights --------------------------------------------------------------------------------
def to_hf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict (tied head once or twice) -> HF tensors, contiguous, tied stored once."""
    C = cfg.n_embd
    out: dict[str, torch.Tensor] = {}
    if cfg.arch == "modern":
        out["model.embed_tokens.weight"] = state["tok_emb.weight"]
        for i in range(cfg.n_layer):
            ours, hf = f"blocks.{i}.", f"model.layers.{i}."
            q, k, v = state[ours + "attn.qkv.weight"].split(C, dim=0)
            out[hf + "self_attn.q_proj.weight"] = q
            out[hf + "self_attn.k_proj.weight"] = k
            out[hf + "self_attn.v_proj.weight"] = v
            out[hf + "self_attn.o_proj.weight"] = state[ours + "attn.proj.weight"]
            for name in ("gate", "up", "down"):
                out[hf + f"mlp.{name}_proj.weight"] = state[ours + f"mlp.{name}.weight"]
            out[hf + "input_layernorm.weight"] = state[ours + "norm1.weight"]
            out[hf + "post_attention_layernorm.weight"] = state[ours + "norm2.weight"]
        out["model.norm.weight"] = state["norm_f.weight"]
    else:
        out["transformer.wte.weight"] = state["tok_emb.weight"]
        out["transformer.wpe.weight"] = state["pos_emb.weight"]
        for i in range(cfg.n_layer):
            ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
            pairs = {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
                     "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
            for a, b in pairs.items():
                out[hf + b + ".weight"] = state[ours + a + ".weight"].t()  # Conv1D: (in, out)
                out[hf + b + ".bias"] = state[ours + a + ".bias"]
            for a, b in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[hf + b + ".weight"] = state[ours + a + ".weight"]
                out[hf + b + ".bias"] = state[ours + a + ".bias"]
        out["transformer.ln_f.weight"] = state["norm_f.weight"]
        out["transformer.ln_f.bias"] = state["norm_f.bias"]
        out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


_IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def from_hf_tensors(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF tensors -> our state dict; the inverse of `to_hf_tensors`. Missing or unknown
    tensors raise UserError. For "gpt", a missing lm_head means GPT-2's tied head (wte).
    For "modern", an lm_head must equal embed_tokens (the caller checks tying)."""
    src = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_BUFFERS)}
    if cfg.arch == "gpt":  # GPT2Model checkpoints (e.g. the original gpt2) have no prefix
        src = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v
               for k, v in src.items()}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in src:
            raise UserError(f"the checkpoint has no tensor {name}; it does not fit its config.json")
        used.add(name)
        return src[name]

    out: dict[str, torch.Tensor] = {}
    if cfg.arch == "modern":
        out["tok_emb.weight"] = take("model.embed_tokens.weight")
        for i in range(cfg.n_layer):
            ours, hf = f"blocks.{i}.", f"model.layers.{i}."
            out[ours + "attn.qkv.weight"] = torch.cat(
                [take(hf + f"self_attn.{p}_proj.weight") for p in "qkv"], dim=0)
            out[ours + "attn.proj.weight"] = take(hf + "self_attn.o_proj.weight")
            for name in ("gate", "up", "down"):
                out[ours + f"mlp.{name}.weight"] = take(hf + f"mlp.{name}_proj.weight")
            out[ours + "norm1.weight"] = take(hf + "input_layernorm.weight")
            out[ours + "norm2.weight"] = take(hf + "post_attention_layernorm.weight")
        out["norm_f.weight"] = take("model.norm.weight")
        if "lm_head.weight" in src:
            used.add("lm_head.weight")
    else:
        out["tok_emb.weight"] = take("transformer.wte.weight")
        out["pos_emb.weight"] = take("transformer.wpe.weight")
        for i in range(cfg.n_layer):
            ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
            pairs = {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
                     "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
            for a, b in pairs.items():
                out[ours + a + ".weight"] = take(hf + b + ".weight").t()
                out[ours + a + ".bias"] = take(hf + b + ".bias")
            for a, b in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[ours + a + ".weight"] = take(hf + b + ".weight")
                out[ours + a + ".bias"] = take(hf + b + ".bias")
        out["norm_f.weight"] = take("transformer.ln_f.weight")
        out["norm_f.bias"] = take("transformer.ln_f.bias")
        out["lm_head.weight"] = take("lm_head.weight") if "lm_head.weight" in src else out["tok_emb.weight"]
    unexpected = sorted(set(src) - used)
    if unexpected:
        raise UserError(f"the checkpoint has tensors this model has no place for ({', '.join(unexpected[:3])}); "
                        "it uses features banglaslm cannot represent")
    return {k: v.contiguous() for k, v in out.items()}


# ---- writing a folder atomically ------------------------------------------------------------
@contextmanager
def staged_folder(out_dir: str | Path, overwrite: bool = False, what: str = "output") -> Iterator[Path]:
    """Yield a temp folder beside `out_dir`; on success it becomes `out_dir`, on error it goes."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another {what} path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already exists and is not empty; choose another {what} folder or delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        old = None
        if out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rename(out, old / "x")
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ---- export ---------------------------------------------------------------------------------
def _tokenizer_files(tokenizer: Tokenizer, block_size: int) -> dict[str, Callable[[Path], None]]:
    eod = tokenizer.hf.id_to_token(tokenizer.eod_id)
    spec = _with_normalizer(json.loads(tokenizer.hf.to_str()))
    added = {str(t_id): {"content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip,
                         "normalized": t.normalized, "single_word": t.single_word, "special": t.special}
             for t_id, t in sorted(tokenizer.hf.get_added_tokens_decoder().items())}
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eod, "eos_token": eod, "pad_token": None,
        "unk_token": UNK if UNK in tokenizer.hf.get_vocab() else None,
        "add_bos_token": False, "add_eos_token": False,
        # ours encodes a literal "<|endoftext|>" in text as text, never as the control token
        "split_special_tokens": True,
        "model_max_length": block_size, "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
    }
    return {
        "tokenizer.json": lambda p: p.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8"),
        "tokenizer_config.json": lambda p: write_json(p, tok_config),
        "special_tokens_map.json": lambda p: write_json(p, {"bos_token": eod, "eos_token": eod}),
    }


def export_hf(run_dir: str | Path, out_dir: str | Path, which: str = "best", overwrite: bool = False) -> Path:
    """Write the run's `which` checkpoint as a Hugging Face model folder; returns `out_dir`.

    "modern" runs become LlamaForCausalLM, "gpt" runs GPT2LMHeadModel. Raises UserError (and
    writes nothing) when the model cannot be represented exactly.
    """
    loaded = load_model(run_dir, which)
    cfg, tok = loaded.config.model, loaded.tokenizer
    check_exportable(cfg)
    if tok.vocab_size > cfg.vocab_size:
        raise UserError(f"cannot export: the tokenizer has {tok.vocab_size} tokens but the model only "
                        f"{cfg.vocab_size} rows")
    state = {k: v.detach().cpu() for k, v in loaded.model.state_dict().items()}
    bad = sorted({str(v.dtype) for v in state.values()} - {"torch.float32"})
    if bad:
        raise UserError(f"cannot export: weights are {bad[0]}, expected float32")
    tensors = to_hf_tensors(state, cfg)
    # Self-check: the mapping must be exactly invertible, or nothing is written.
    back = from_hf_tensors(tensors, cfg)
    for name, value in state.items():
        if name == "lm_head.weight" and cfg.arch == "modern":
            value, name = state["tok_emb.weight"], "tok_emb.weight"  # tied: stored once
        if name not in back or not torch.equal(back[name], value):
            raise UserError(f"cannot export: tensor {name} does not survive the mapping (a banglaslm bug)")
    provenance = {"format": "banglaslm-hf-export", "version": 1, "normalization": NORMALIZATION,
                  "tokenizer_normalizer_steps": len(bangla_normalizer()["normalizers"]),
                  "checkpoint": loaded.checkpoint.name, "iter": loaded.iteration,
                  "tokenizer_sha256": tok.sha256, "run_config": loaded.config.to_dict()}
    config = hf_config(cfg, tok.eod_id, provenance)
    generation = {"bos_token_id": tok.eod_id, "eos_token_id": tok.eod_id, "pad_token_id": tok.eod_id,
                  # the same defaults as `banglaslm generate`: temperature 0.8, no top-k / top-p
                  "do_sample": True, "temperature": 0.8, "top_k": 0, "top_p": 1.0,
                  "max_new_tokens": 200}
    files = _tokenizer_files(tok, cfg.block_size)
    with staged_folder(out_dir, overwrite, "export") as tmp:
        write_json(tmp / "config.json", config)
        write_json(tmp / "generation_config.json", generation)
        save_file(tensors, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        for name, write in files.items():
            write(tmp / name)
    return Path(out_dir)
