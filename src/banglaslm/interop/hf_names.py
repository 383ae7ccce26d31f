"""Our tensor names ↔ Hugging Face's, as one table read in both directions.

"modern" runs are `LlamaForCausalLM`, "gpt" runs `GPT2LMHeadModel`. Each row says where a
tensor of ours lives in the HF checkpoint and how it is laid out there: the same ("same"),
transposed ("t": GPT-2's Conv1D stores (in, out)), or our fused q/k/v rows cut into three
("qkv"; our RoPE is Llama's "rotate half" layout, so no permutation is needed).
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..errors import UserError
from ..model import tied_keys

SAME, TRANSPOSE, QKV = "same", "t", "qkv"

# (ours, theirs, layout); "{i}" is the layer number.
LLAMA = [
    ("tok_emb.weight", "model.embed_tokens.weight", SAME),  # also the head when tied
    ("blocks.{i}.attn.qkv.weight", "model.layers.{i}.self_attn.{q,k,v}_proj.weight", QKV),
    ("blocks.{i}.attn.proj.weight", "model.layers.{i}.self_attn.o_proj.weight", SAME),
    ("blocks.{i}.mlp.gate.weight", "model.layers.{i}.mlp.gate_proj.weight", SAME),
    ("blocks.{i}.mlp.up.weight", "model.layers.{i}.mlp.up_proj.weight", SAME),
    ("blocks.{i}.mlp.down.weight", "model.layers.{i}.mlp.down_proj.weight", SAME),
    ("blocks.{i}.norm1.weight", "model.layers.{i}.input_layernorm.weight", SAME),
    ("blocks.{i}.norm2.weight", "model.layers.{i}.post_attention_layernorm.weight", SAME),
    ("norm_f.weight", "model.norm.weight", SAME),
    ("lm_head.weight", "lm_head.weight", SAME),  # untied only
]
GPT2 = [
    ("tok_emb.weight", "transformer.wte.weight", SAME),
    ("pos_emb.weight", "transformer.wpe.weight", SAME),
    *[(f"blocks.{{i}}.{ours}.{p}", f"transformer.h.{{i}}.{theirs}.{p}", TRANSPOSE if p == "weight" else SAME)
      for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                           ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj"))
      for p in ("weight", "bias")],
    *[(f"blocks.{{i}}.{ours}.{p}", f"transformer.h.{{i}}.{theirs}.{p}", SAME)
      for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")) for p in ("weight", "bias")],
    ("norm_f.weight", "transformer.ln_f.weight", SAME),
    ("norm_f.bias", "transformer.ln_f.bias", SAME),
    ("lm_head.weight", "lm_head.weight", SAME),  # untied only
]
# HF buffers that are functions of the config, not weights.
_IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def tensor_map(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], str]]:
    """Every (our name, HF names, layout) of a model with `cfg`'s architecture and depth; a tied
    head has no row of its own (the embedding's is both)."""
    rows = []
    for ours, theirs, layout in LLAMA if cfg.arch == "modern" else GPT2:
        if ours in tied_keys(cfg):
            continue
        names = [theirs.replace("{q,k,v}", p) for p in "qkv"] if layout == QKV else [theirs]
        for i in range(cfg.n_layer) if "{i}" in ours else [None]:
            rows.append((ours.format(i=i), tuple(n.format(i=i) for n in names), layout))
    return rows


def to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict → HF tensors, contiguous on the CPU, a tied matrix stored once."""
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, layout in tensor_map(cfg):
        tensor = state[ours]
        parts = tensor.split(cfg.n_embd, dim=0) if layout == QKV else [tensor.t() if layout == TRANSPOSE else tensor]
        out.update(zip(theirs, parts))
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def from_hf(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF tensors → our state dict; the inverse of `to_hf`. A missing or unknown tensor is a
    UserError. With a tied head (`cfg.tied_head`) the result has no lm_head.weight, and one in
    `tensors` is ignored, as transformers ignores it."""
    src = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_BUFFERS)}
    if cfg.arch == "gpt":  # GPT2Model checkpoints (e.g. the original gpt2) have no prefix
        src = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v for k, v in src.items()}
    used = tied_keys(cfg)  # the HF name of our tied head is the same
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, layout in tensor_map(cfg):
        missing = [n for n in theirs if n not in src]
        if missing:
            raise UserError(f"the checkpoint has no tensor {missing[0]}; it does not fit its config.json")
        used.update(theirs)
        parts = [src[n] for n in theirs]
        out[ours] = torch.cat(parts, dim=0) if layout == QKV else parts[0].t() if layout == TRANSPOSE else parts[0]
    unexpected = sorted(set(src) - used)
    if unexpected:
        raise UserError(f"the checkpoint has tensors this model has no place for ({', '.join(unexpected[:3])}); "
                        "it uses features banglaslm cannot represent")
    return {k: v.contiguous() for k, v in out.items()}
