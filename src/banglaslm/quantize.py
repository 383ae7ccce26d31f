"""Weight-only quantization for CPU inference: int8 with one scale per output row, or bf16.

Why: at batch 1 a decoding step reads every weight once, so it costs about what reading the
weights costs; int8 matrices are a quarter of float32's bytes and bf16 half. Only the stored
matrices change (every Linear, the token embedding and the output head); activations, norms,
biases, positions, the KV cache and every sum stay float32. Why one scale per row rather than
llama.cpp's q8_0 blocks of 32, and what it costs in bits per character: docs/generation.md.
The C decode step reads these modules' storage directly (generation/cpu_decode.py); their
PyTorch forwards below are the reference it is tested against.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from .config import Opt
from .errors import UserError

QUANTIZE = ("none", "int8", "bf16")
# The parameter of every command that decodes (`--quantize` on the command line).
Quantize = Annotated[str, Opt("store the weight matrices as int8 (one scale per row) or bf16 for faster CPU "
                              "decoding; activations stay float32 (docs/generation.md)", QUANTIZE)]
INT8_MAX = 127  # symmetric: -127..127, so that -w quantizes to -q


def check_quantize(kind: str, device: torch.device) -> None:
    """UserError unless `kind` is one of QUANTIZE and runs on `device`: 'none' anywhere, the
    others on the CPU. (No CPU is refused: built without AVX2, the C step's portable loops
    still decode int8 faster than float32; docs/generation.md.)"""
    if kind not in QUANTIZE:
        raise UserError(f"`quantize` must be one of {', '.join(QUANTIZE)}, got {kind!r}")
    if kind != "none" and device.type != "cpu":
        raise UserError(f"`quantize` {kind} is for decoding on the CPU; on a GPU use `quantize` none")


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (q int8 (rows, cols), scale float32 (rows,)) with
    weight ≈ q * scale[:, None], |error| ≤ scale / 2 = max|row| / 254. An all-zero row gets
    scale 1 (q is all zeros either way)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / INT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


class QuantLinear(nn.Module):
    """y = x Wᵀ + b, W (out, in) stored as `qweight` int8 with `scale` (out,) float32, or as bf16
    (`scale` None). Input and output float32 (..., in) -> (..., out)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str):
        super().__init__()
        if kind == "int8":
            q, scale = quantize_rows(weight)
        else:
            q, scale = weight.detach().to(torch.bfloat16).contiguous(), None
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Widened per call, as the C step does, with the int8 scale applied to the sums: (x q)
        # * scale. (Not torch._weight_int8pack_mm: its CPU kernel is slow on float32 input.)
        y = F.linear(x.float(), self.qweight.float())
        if self.scale is not None:
            y = y * self.scale
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        out, inp = self.qweight.shape
        return f"in_features={inp}, out_features={out}, {'int8' if self.scale is not None else 'bf16'}"


class QuantEmbedding(nn.Module):
    """Rows of a QuantLinear's storage looked up by token id: (...,) int64 -> (..., dim) float32.
    Shares the tensors of `rows`, so a tied output head is stored once."""

    def __init__(self, rows: QuantLinear):
        super().__init__()
        self.register_buffer("qweight", rows.qweight)
        self.register_buffer("scale", rows.scale)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.qweight[idx].float()
        return x if self.scale is None else x * self.scale[idx].unsqueeze(-1)


def quantize_model(model: nn.Module, kind: str) -> nn.Module:
    """`model` (a GPT on the CPU) with every nn.Linear, its token embedding and its output head
    stored as `kind` ('int8' or 'bf16'; 'none' returns it untouched), in place; the float32
    matrices are released. A tied head and embedding stay one matrix. Raises UserError for an
    unknown kind or a model on a GPU."""
    check_quantize(kind, next(model.parameters()).device)
    if kind == "none":
        return model
    tied = model.lm_head.weight is model.tok_emb.weight
    head = QuantLinear(model.lm_head.weight, None, kind)
    embedding = head if tied else QuantLinear(model.tok_emb.weight, None, kind)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child is not model.lm_head:
                setattr(parent, name, QuantLinear(child.weight, child.bias, kind))
    model.lm_head, model.tok_emb = head, QuantEmbedding(embedding)
    return model
