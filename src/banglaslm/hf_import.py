"""Import a local Hugging Face Llama or GPT-2 checkpoint as a banglaslm run folder.

    import_hf(HF_DIR, RUN_DIR) reads HF_DIR/config.json, model.safetensors (or the shards named
    in model.safetensors.index.json) and tokenizer.json, and writes RUN_DIR/ like the trainer
    does: config.json (RunConfig), tokenizer.json, checkpoints/latest.safetensors and
    checkpoints/best.safetensors (the same weights).

What the imported run supports
- `load_model`, `banglaslm generate`, `banglaslm eval`, and export back to Hugging Face.
- `train(data_dir, run_dir, resume=True)` continues training from the imported weights (a
  fine-tune): the checkpoint holds a fresh AdamW state (no moments), iteration 0 and the train
  settings of the exporting run (or the defaults); the data folder must have been prepared with
  this very tokenizer, which resume checks by its hash.

Mapping: Llama -> arch "modern", GPT-2 -> arch "gpt" (the inverse of `banglaslm.export`). Weights
are upcast to float32 (lossless). A checkpoint exported by banglaslm carries its run config, so
the non-architectural settings (dropout, the train section, rope_theta of a "gpt" run) come back
too; the architecture always comes from the HF config. The Bangla normalizer that export put into
tokenizer.json is removed again (our Python `normalize()` runs before every encode), so a round
trip gives back the original tokenizer and hash; any other normalizer is kept.

Refused with UserError (nothing is written): anything the model in `banglaslm.model` cannot
compute exactly. For Llama: grouped-query attention (num_key_value_heads != num_attention_heads),
head_dim != hidden_size / heads, attention or MLP biases, rope scaling or partial rotary,
an activation other than silu, intermediate_size other than `swiglu_hidden(hidden_size)` (our
SwiGLU width is fixed by the model width), an untied lm_head. For GPT-2: activations other than
exact "gelu" (the original GPT-2 uses "gelu_new", the tanh approximation), n_inner != 4 * n_embd,
unscaled or layer-scaled attention, cross-attention. Also: other model types, checkpoints that are
not safetensors, non-float tensors, tensors that do not fit the config, a tokenizer larger than
the embedding. A GPT-2 with a tied head (the usual case) is imported with a copy of `wte` as the
head: the same function, but training will then update the two matrices separately.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .checkpoint import save_checkpoint
from .config import ModelConfig, RunConfig, TrainConfig, validate
from .errors import UserError
from .fileio import read_json_or_fail
from .export import from_hf_tensors, staged_folder, strip_bangla_normalizer, write_json
from .model import GPT, swiglu_hidden
from .runfolder import RUN_FORMAT_VERSION, RunFolder
from .tokenizer import Tokenizer
from .trainer import make_optimizer

# best_val of an imported run: no evaluation has happened yet (JSON has no infinity).
NO_EVAL_YET = sys.float_info.max


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path.parent} has no {path.name}; it is not a Hugging Face {what} folder")
    data = read_json_or_fail(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data


def _refuse(reason: str) -> UserError:
    return UserError(f"cannot import: {reason}")


def _positive_int(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _refuse(f"config.json needs a positive integer '{key}' (got {value!r})")
    return value


def _rope_theta(config: dict[str, Any]) -> float:
    """rope_theta from transformers 5's rope_parameters or 4.x's rope_theta/rope_scaling."""
    params = config.get("rope_parameters")
    scaling = config.get("rope_scaling")
    if isinstance(params, dict) and any(isinstance(v, dict) for v in params.values()):
        raise _refuse("per-layer-type rope_parameters are not supported")
    for spec in (params, scaling):
        if spec:
            kind = spec.get("rope_type", spec.get("type", "default"))
            if kind != "default":
                raise _refuse(f"rope scaling '{kind}' is not supported (only plain RoPE)")
            if spec.get("partial_rotary_factor", 1.0) != 1.0:
                raise _refuse("partial rotary embeddings are not supported")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise _refuse("partial rotary embeddings are not supported")
    theta = (params or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    return float(theta)


def model_config_from_hf(config: dict[str, Any]) -> tuple[ModelConfig, bool]:
    """Our ModelConfig for a HF config.json, plus whether the HF head is tied to the embedding.

    Raises UserError for anything `banglaslm.model.GPT` cannot compute exactly."""
    model_type = config.get("model_type")
    vocab = _positive_int(config, "vocab_size")
    if model_type == "llama":
        hidden = _positive_int(config, "hidden_size")
        heads = _positive_int(config, "num_attention_heads")
        kv_heads = config.get("num_key_value_heads") or heads
        if kv_heads != heads:
            raise _refuse(f"grouped-query attention (num_key_value_heads={kv_heads}, "
                          f"num_attention_heads={heads}) is not supported")
        if hidden % heads or (config.get("head_dim") or hidden // heads) != hidden // heads:
            raise _refuse(f"head_dim={config.get('head_dim')} must equal hidden_size / num_attention_heads")
        if (hidden // heads) % 2:
            raise _refuse("RoPE needs an even head size")
        if config.get("attention_bias") or config.get("mlp_bias"):
            raise _refuse("Llama with attention/MLP biases is not supported")
        if config.get("hidden_act", "silu") not in ("silu", "swish"):
            raise _refuse(f"hidden_act '{config.get('hidden_act')}' is not supported (only silu)")
        inter = _positive_int(config, "intermediate_size")
        if inter != swiglu_hidden(hidden):
            raise _refuse(f"intermediate_size={inter}, but banglaslm's SwiGLU width for hidden_size={hidden} "
                          f"is {swiglu_hidden(hidden)}")
        cfg = ModelConfig(
            arch="modern", n_layer=_positive_int(config, "num_hidden_layers"), n_head=heads, n_embd=hidden,
            block_size=_positive_int(config, "max_position_embeddings"),
            dropout=float(config.get("attention_dropout") or 0.0), vocab_size=vocab,
            rope_theta=_rope_theta(config), norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        )
        return cfg, bool(config.get("tie_word_embeddings", False))
    if model_type == "gpt2":
        n_embd = _positive_int(config, "n_embd")
        act = config.get("activation_function", "gelu_new")
        if act != "gelu":
            raise _refuse(f"GPT-2 activation '{act}' is not supported: banglaslm's gpt arch uses exact (erf) "
                          "GELU, 'gelu'" + (" ('gelu_new' is the tanh approximation)" if act == "gelu_new" else ""))
        if config.get("n_inner") not in (None, 4 * n_embd):
            raise _refuse(f"n_inner={config.get('n_inner')} is not supported (only 4 * n_embd)")
        if not config.get("scale_attn_weights", True) or config.get("scale_attn_by_inverse_layer_idx"):
            raise _refuse("GPT-2 attention must be scaled by 1/sqrt(head_dim) only")
        if config.get("add_cross_attention"):
            raise _refuse("GPT-2 with cross-attention is not supported")
        cfg = ModelConfig(
            arch="gpt", n_layer=_positive_int(config, "n_layer"), n_head=_positive_int(config, "n_head"),
            n_embd=n_embd, block_size=_positive_int(config, "n_positions"),
            dropout=float(config.get("resid_pdrop") or 0.0), vocab_size=vocab,
            norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
        )
        if n_embd % cfg.n_head:
            raise _refuse(f"n_embd ({n_embd}) must divide by n_head ({cfg.n_head})")
        return cfg, bool(config.get("tie_word_embeddings", True))
    raise _refuse(f"model_type '{model_type}' is not supported (only 'llama' and 'gpt2')")


def _read_tensors(src: Path) -> dict[str, torch.Tensor]:
    single, index = src / "model.safetensors", src / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index, "model").get("weight_map") or {}
        files = [src / name for name in sorted(set(weight_map.values()))]
    else:
        raise _refuse(f"{src} has no model.safetensors (other weight formats, e.g. pytorch_model.bin, "
                      "are not read: they can run code)")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise UserError(f"{path} is damaged or unreadable ({exc})") from None
    for key, value in tensors.items():
        if not value.is_floating_point():
            raise _refuse(f"tensor {key} is {value.dtype} (quantized checkpoints are not supported)")
    return {k: v.to(torch.float32) for k, v in tensors.items()}


def _read_tokenizer(src: Path, provenance: dict[str, Any]) -> Tokenizer:
    path = src / "tokenizer.json"
    if not path.is_file():
        raise _refuse(f"{src} has no tokenizer.json (only 'fast' tokenizers can be read)")
    spec = read_json_or_fail(path)
    steps = provenance.get("tokenizer_normalizer_steps")
    spec = strip_bangla_normalizer(spec, steps if isinstance(steps, int) and not isinstance(steps, bool) else None)
    spec["truncation"] = None  # our encode must never cut text silently
    spec["padding"] = None
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "tokenizer.json"
        clean.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        return Tokenizer.from_file(clean)


def _train_config(provenance: dict[str, Any]) -> TrainConfig:
    try:
        return RunConfig.from_dict({"train": provenance["run_config"]["train"]}).train
    except (UserError, KeyError, TypeError):
        return TrainConfig()


def import_hf(hf_dir: str | Path, out_run_dir: str | Path) -> Path:
    """Write a banglaslm run folder for the HF checkpoint in `hf_dir`; returns `out_run_dir`."""
    src = Path(hf_dir)
    if not src.is_dir():
        raise UserError(f"Hugging Face model folder not found: {src}")
    config = _read_json(src / "config.json", "model")
    model_cfg, tied = model_config_from_hf(config)
    provenance = config.get("banglaslm") if isinstance(config.get("banglaslm"), dict) else {}
    saved = (provenance.get("run_config") or {}).get("model") or {}
    if isinstance(saved.get("dropout"), (int, float)) and 0 <= saved["dropout"] < 1:
        model_cfg.dropout = float(saved["dropout"])
    if model_cfg.arch == "gpt" and isinstance(saved.get("rope_theta"), (int, float)) and saved["rope_theta"] > 0:
        model_cfg.rope_theta = float(saved["rope_theta"])  # unused by "gpt"; kept for an identical config
    run_config = RunConfig(model=model_cfg, train=_train_config(provenance))
    validate(run_config)

    tensors = _read_tensors(src)
    head_key = "lm_head.weight"
    embed_key = "model.embed_tokens.weight" if model_cfg.arch == "modern" else (
        "transformer.wte.weight" if "transformer.wte.weight" in tensors else "wte.weight")
    if tied:
        tensors.pop(head_key, None)  # transformers ties it to the embedding whatever the file holds
    elif head_key not in tensors:
        raise _refuse("tie_word_embeddings is false but the checkpoint has no lm_head.weight")
    elif model_cfg.arch == "modern":
        if embed_key not in tensors or not torch.equal(tensors[head_key], tensors[embed_key]):
            raise _refuse("this Llama has an untied lm_head; banglaslm's modern arch ties it to the embedding")
        tensors.pop(head_key)
    state = from_hf_tensors(tensors, model_cfg)
    model = GPT(model_cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise _refuse(f"the tensors do not fit config.json ({str(exc).splitlines()[-1].strip()})") from None
    if set(missing) - {"lm_head.weight"} or unexpected:
        raise _refuse(f"the tensors do not fit config.json (missing {sorted(missing)[:3]})")
    model.eval()

    tokenizer = _read_tokenizer(src, provenance)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise _refuse(f"the tokenizer has {tokenizer.vocab_size} tokens but the embedding only "
                      f"{model_cfg.vocab_size} rows")

    optimizer = make_optimizer(model, run_config.train, torch.device("cpu"))
    ckpt_state = {
        "iter": 0, "config": run_config.to_dict(), "tokenizer_sha256": tokenizer.sha256,
        # a fresh AdamW state (below) so that `train --resume` can continue from these weights
        "best_val": NO_EVAL_YET, "history": [], "precision": "fp32", "scaler": None,
        "imported_from": {"path": str(src.resolve()), "model_type": config.get("model_type"),
                          "banglaslm": {k: v for k, v in provenance.items() if k != "run_config"}},
    }
    with staged_folder(out_run_dir, what="run") as tmp:
        run = RunFolder(tmp)
        write_json(run.config_path, {"format": "banglaslm-run", "version": RUN_FORMAT_VERSION,
                                     **run_config.to_dict()})
        tokenizer.save(run.tokenizer_path)
        save_checkpoint(run.checkpoint("latest"), model, ckpt_state, optimizer)
        shutil.copyfile(run.checkpoint("latest"), run.checkpoint("best"))
    return Path(out_run_dir)
