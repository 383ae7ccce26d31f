"""Import a local Hugging Face Llama or GPT-2 checkpoint as a banglaslm run folder.

`import_hf(HF_DIR, RUN_DIR)` reads config.json, model.safetensors (or its shards) and
tokenizer.json and writes a run folder as training does, with the weights as both checkpoints
and no optimizer state (training from it starts a fresh AdamW). Llama becomes "modern", GPT-2
"gpt", through the same name table as export (`hf_names`). Anything `banglaslm.model` cannot
compute exactly is refused before anything is written; docs/interop.md lists what.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..checkpoint import save_checkpoint
from ..config import ModelConfig, RunConfig, validate
from ..errors import UserError
from ..fileio import as_path, atomic_copy, read_json_or_fail, staged_folder
from ..model import GPT, swiglu_hidden, tied_keys
from ..runfolder import RunFolder
from ..tokenizer import Tokenizer
from ..tokenizer_import import read_tokenizer_json
from .hf_names import from_hf

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


def model_config_from_hf(config: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig for a HF config.json, its head tied as the config says (transformers'
    default: untied in Llama, tied in GPT-2).

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
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
        return cfg
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
            tie_embeddings=bool(config.get("tie_word_embeddings", True)),
        )
        if n_embd % cfg.n_head:
            raise _refuse(f"n_embd ({n_embd}) must divide by n_head ({cfg.n_head})")
        return cfg
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
                      "are not read: they can run code); if you trust the file, load it with transformers and "
                      "save_pretrained() it again, which writes safetensors")
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
        sources = [name for name in ("vocab.json", "merges.txt", "tokenizer.model", "spiece.model")
                   if (src / name).is_file()]
        fix = (f"AutoTokenizer.from_pretrained('{src}').save_pretrained('{src}') writes one from its "
               f"{' and '.join(sources)}" if sources else
               "it holds no tokenizer at all: copy the tokenizer files of the model it came from (tokenizer.json, "
               "or what AutoTokenizer reads) into it")
        raise _refuse(f"{src} has no tokenizer.json (only 'fast' tokenizers can be read); {fix}")
    return read_tokenizer_json(path, provenance.get("tokenizer_normalizer_steps"), provenance.get("tokenizer_post_processor"))


def _saved_sections(provenance: dict[str, Any]) -> RunConfig:
    """The train and finetune settings a banglaslm export carries (each section that does not
    read back, the defaults)."""
    config, saved = RunConfig(), provenance.get("run_config") or {}
    for section in ("train", "finetune"):
        try:
            setattr(config, section, getattr(RunConfig.from_dict({section: saved[section]}), section))
        except (UserError, KeyError, TypeError):
            pass
    return config


def _run_config(config: dict[str, Any], provenance: dict[str, Any]) -> RunConfig:
    """The run config for an HF config (a banglaslm export's own settings where it carries them)."""
    model_cfg = model_config_from_hf(config)
    saved = (provenance.get("run_config") or {}).get("model") or {}
    if isinstance(saved.get("dropout"), (int, float)) and 0 <= saved["dropout"] < 1:
        model_cfg.dropout = float(saved["dropout"])
    if "tie_embeddings" in saved and saved["tie_embeddings"] is None and \
            model_cfg.tied_head == ModelConfig(arch=model_cfg.arch).tied_head:
        model_cfg.tie_embeddings = None  # the run left it to its arch, as the export says
    if model_cfg.arch == "gpt" and isinstance(saved.get("rope_theta"), (int, float)) and saved["rope_theta"] > 0:
        model_cfg.rope_theta = float(saved["rope_theta"])  # unused by "gpt"; kept for an identical config
    run_config = _saved_sections(provenance)
    run_config.model = model_cfg
    validate(run_config)
    return run_config


def _model(src: Path, cfg: ModelConfig) -> GPT:
    """Our model holding the HF checkpoint's weights, or a refusal saying why it cannot."""
    tensors = _read_tensors(src)
    if not cfg.tied_head and "lm_head.weight" not in tensors:
        raise _refuse("tie_word_embeddings is false but the checkpoint has no lm_head.weight")
    model = GPT(cfg)
    try:
        missing, unexpected = model.load_state_dict(from_hf(tensors, cfg), strict=False)
    except RuntimeError as exc:
        raise _refuse(f"the tensors do not fit config.json ({str(exc).splitlines()[-1].strip()})") from None
    if set(missing) - tied_keys(cfg) or unexpected:
        raise _refuse(f"the tensors do not fit config.json (missing {sorted(missing)[:3]})")
    return model.eval()


def import_hf(hf_dir: str | Path, out_run_dir: str | Path) -> Path:
    """Write a banglaslm run folder for the HF checkpoint in `hf_dir`; returns `out_run_dir`."""
    src = as_path(hf_dir, "hf_dir", "a Hugging Face model folder")
    out_run_dir = as_path(out_run_dir, "out_run_dir", "a run folder")
    if src.is_file():
        raise UserError(f"{src} is a file; import reads a Hugging Face model folder (config.json, model.safetensors, "
                        "tokenizer.json), e.g. one `export --format hf` wrote")
    if not src.is_dir():
        raise UserError(f"Hugging Face model folder not found: {src}")
    if RunFolder(src).is_run_folder():
        raise UserError(f"{src} is a banglaslm run folder already: use it as it is (generate, finetune, "
                        "train --init-from), or `export --format hf` it to make a Hugging Face folder")
    config = _read_json(src / "config.json", "model")
    provenance = config.get("banglaslm") if isinstance(config.get("banglaslm"), dict) else {}
    run_config = _run_config(config, provenance)
    model = _model(src, run_config.model)
    tokenizer = _read_tokenizer(src, provenance)
    if note := tokenizer.round_trip_note():
        print(f"note: {note}", file=sys.stderr)
    if tokenizer.vocab_size > run_config.model.vocab_size:
        raise _refuse(f"the tokenizer has {tokenizer.vocab_size} tokens but the embedding only "
                      f"{run_config.model.vocab_size} rows")
    ckpt_state = {
        "iter": 0, "config": run_config.to_dict(), "tokenizer_sha256": tokenizer.sha256,
        "best_val": NO_EVAL_YET, "history": [], "precision": "fp32", "scaler": None,
        "imported_from": {"path": str(src.resolve()), "model_type": config.get("model_type"),
                          "banglaslm": {k: v for k, v in provenance.items() if k != "run_config"}},
    }
    with staged_folder(out_run_dir, "run folder") as tmp:
        run = RunFolder(tmp)
        run.write_header(run_config, tokenizer)
        save_checkpoint(run.checkpoint("latest"), model, ckpt_state)  # weights only: a fresh optimizer
        atomic_copy(run.checkpoint("latest"), run.checkpoint("best"))
    return Path(out_run_dir)
