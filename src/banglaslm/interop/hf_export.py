"""Export a run as a Hugging Face model folder that `transformers` loads with no custom code.

`export_hf(run_dir, out_dir)` writes config.json (LlamaConfig for "modern", GPT2Config for
"gpt"), model.safetensors (float32, HF names: `hf_names`), generation_config.json, and a
tokenizer.json that carries our normalization as its `normalizer`, so the HF tokenizer gives
our ids. Faithful or refuse: what the HF classes cannot represent exactly is a UserError
before anything is written, and the weights are mapped back and compared bit for bit.
docs/interop.md has the mapping, the normalizer and the known differences.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.processors import TemplateProcessing

from ..chat_template import jinja_template
from ..config import ModelConfig, Opt, SamplingParams
from ..errors import UserError
from ..fileio import atomic_write_json, staged_folder, write_safetensors
from ..model import swiglu_hidden, tied_keys
from ..runfolder import Which, load_model
from ..text import NORMALIZATION
from ..tokenizer import Tokenizer
from ..tokenizer_import import bangla_normalizer, with_bangla_normalizer
from .hf_names import from_hf, to_hf

HF_WEIGHTS = "model.safetensors"


# ---- configs --------------------------------------------------------------------------------
# ModelConfig fields whose meaning export knows; a field added later must be taught here
# before a run that changes it from its default can be exported.
_KNOWN_FIELDS = {"arch", "n_layer", "n_head", "n_embd", "block_size", "dropout", "vocab_size",
                 "rope_theta", "norm_eps", "tie_embeddings"}


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


def hf_config(cfg: ModelConfig, eod_id: int, provenance: dict[str, Any] | None = None,
              pad_id: int | None = None) -> dict[str, Any]:
    """config.json for LlamaForCausalLM ("modern") or GPT2LMHeadModel ("gpt")."""
    check_exportable(cfg)
    common = {"vocab_size": cfg.vocab_size, "bos_token_id": eod_id, "eos_token_id": eod_id,
              "pad_token_id": pad_id, "initializer_range": 0.02, "use_cache": True,
              "torch_dtype": "float32", "dtype": "float32", "tie_word_embeddings": cfg.tied_head}
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
            "attention_bias": False, "attention_dropout": 0.0,
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
            **common,
        }
    if provenance:
        out["banglaslm"] = provenance
    return out


# ---- export ---------------------------------------------------------------------------------
PAD_PIECES = ("<pad>", "[PAD]", "<|pad|>")  # as SentencePiece (T5's spiece.model), BERT and others name it


def pad_id(tokenizer: Tokenizer) -> int | None:
    """The id of the tokenizer's own padding token (a special token of a `PAD_PIECES` name), or None.

    Ours has none: training packs documents and never pads. An imported SentencePiece model
    (BanglaT5's) has `<pad>`, which transformers' batching and collators should pad with.
    """
    return next((i for i in sorted(tokenizer.special_ids) if tokenizer.hf.id_to_token(i) in PAD_PIECES
                 and i != tokenizer.eod_id), None)


def _tokenizer_files(tokenizer: Tokenizer, block_size: int) -> dict[str, Callable[[Path], None]]:
    eod = tokenizer.hf.id_to_token(tokenizer.eod_id)
    pad = pad_id(tokenizer)
    pad = None if pad is None else tokenizer.hf.id_to_token(pad)
    hf = HFTokenizer.from_str(tokenizer.hf.to_str())
    # Every training document followed an end-of-document token, so `tokenizer(text)` puts one
    # first, as Llama's tokenizer puts its BOS: transformers' generate and pipelines then
    # continue a prompt exactly as `banglaslm generate` does. Our own encode never adds it.
    hf.post_processor = TemplateProcessing(single=f"{eod} $A", pair=f"{eod} $A {eod} $B:1",
                                           special_tokens=[(eod, tokenizer.eod_id)])
    spec = with_bangla_normalizer(json.loads(hf.to_str()))
    added = {str(t_id): {"content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip,
                         "normalized": t.normalized, "single_word": t.single_word, "special": t.special}
             for t_id, t in sorted(tokenizer.hf.get_added_tokens_decoder().items())}
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eod, "eos_token": eod, "pad_token": pad,
        "unk_token": tokenizer.hf.id_to_token(tokenizer.unk_id) if tokenizer.unk_id is not None else None,
        "add_bos_token": True, "add_eos_token": False,
        # The chat template writes the end-of-document token as text ("{{ eos_token }}"), which
        # must become the control token: so a literal one in text does too (ours keeps it text).
        "split_special_tokens": False,
        "chat_template": jinja_template(),
        "model_max_length": block_size, "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
    }
    return {
        "tokenizer.json": lambda p: p.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8"),
        "tokenizer_config.json": lambda p: atomic_write_json(p, tok_config),
        "special_tokens_map.json": lambda p: atomic_write_json(
            p, {"bos_token": eod, "eos_token": eod} | ({"pad_token": pad} if pad else {})),
    }


EXPORT_FILES = {"config.json", "generation_config.json", HF_WEIGHTS, "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json"}


def _is_export(folder: Path) -> bool:
    """An earlier export of ours, and nothing else: what `overwrite` may replace."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return (config.get("banglaslm") or {}).get("format") == "banglaslm-hf-export" and \
            {p.name for p in folder.iterdir()} <= EXPORT_FILES
    except (OSError, ValueError, AttributeError):
        return False


def float32_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights on the CPU; UserError unless they are all float32."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = sorted({str(v.dtype) for v in state.values()} - {"torch.float32"})
    if bad:
        raise UserError(f"cannot export: weights are {bad[0]}, expected float32")
    return state


def _hf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """`to_hf(state)`, checked to map back exactly (or nothing is written)."""
    tensors = to_hf(state, cfg)
    back = from_hf(tensors, cfg)
    for name, value in state.items():
        if name in tied_keys(cfg):
            continue  # the embedding's tensor, checked under its own name
        if name not in back or not torch.equal(back[name], value):
            raise UserError(f"cannot export: tensor {name} does not survive the mapping (a banglaslm bug)")
    return tensors


def export_hf(
    run_dir: str | Path, out_dir: str | Path,
    which: Which = "best",
    overwrite: Annotated[bool, Opt("replace an existing, non-empty output folder")] = False,
) -> Path:
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
    tensors = _hf_tensors(float32_state(loaded.model), cfg)
    provenance = {"format": "banglaslm-hf-export", "version": 1, "normalization": NORMALIZATION,
                  "tokenizer_normalizer_steps": len(bangla_normalizer()["normalizers"]),
                  "checkpoint": loaded.checkpoint.name, "iter": loaded.iteration,
                  "tokenizer_sha256": tok.sha256, "run_config": loaded.config.to_dict(),
                  # the export writes its own (a leading eod); import puts the run's back
                  "tokenizer_post_processor": json.loads(tok.hf.to_str()).get("post_processor")}
    pad = pad_id(tok)
    config = hf_config(cfg, tok.eod_id, provenance, pad)
    defaults = SamplingParams()  # the same defaults as `banglaslm generate`
    generation = {"bos_token_id": tok.eod_id, "eos_token_id": tok.eod_id,
                  "pad_token_id": tok.eod_id if pad is None else pad,
                  "do_sample": not defaults.greedy, "temperature": defaults.temperature,
                  "top_k": defaults.top_k or 0, "top_p": defaults.top_p or 1.0,
                  # prompt and answer within the block: our engine slides its window past it, transformers
                  # cannot (GPT-2's position table ends there; Llama's positions beyond were never trained)
                  "max_length": cfg.block_size}
    if cfg.vocab_size > tok.vocab_size:  # rows no token maps to (a padded vocabulary): our engine never samples
        generation["suppress_tokens"] = list(range(tok.vocab_size, cfg.vocab_size))  # them, nor may transformers
    files = _tokenizer_files(tok, cfg.block_size)
    with staged_folder(out_dir, "HF export folder", replaceable=_is_export, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / "config.json", config)
        atomic_write_json(tmp / "generation_config.json", generation)
        write_safetensors(tmp / HF_WEIGHTS, tensors, {"format": "pt"})
        for name, write in files.items():
            write(tmp / name)
    return Path(out_dir)
