"""The GPT, in one file, top to bottom.

Two variants share every line that can be shared; `ModelConfig.arch` picks the parts:

| part            | "gpt" (the course)         | "modern"                        |
|-----------------|----------------------------|---------------------------------|
| positions       | learned embedding          | rotary (RoPE) on queries / keys |
| norm            | LayerNorm with bias        | RMSNorm                         |
| MLP             | 4x GELU                    | SwiGLU (about 8/3 x, no bias)   |
| output head     | its own matrix             | tied to the token embedding     |
| linear biases   | yes                        | no                              |

`ModelConfig.tie_embeddings` ties or unties the head in either. Both are pre-norm, attend
through PyTorch's fused `scaled_dot_product_attention`, and are laid out like Hugging Face's
GPT-2 / Llama, so export is a renaming. Generation extends a `KVCache`; training never uses one.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


def swiglu_hidden(n_embd: int) -> int:
    """SwiGLU width: 2/3 of 4x (same parameter count as a 4x GELU MLP), rounded up to 32."""
    return 32 * math.ceil(8 * n_embd / 3 / 32)


def rope_tables(block_size: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (block_size, head_dim), in the 'rotate half' layout Llama uses."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + d/2]) by position-dependent angles. x: (B, H, T, d)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


class KVCache:
    """Keys and values of every layer for a batch of sequences, filled left to right.

    Buffers are allocated once, at (B, n_head, block_size, head_dim) per layer, so decoding
    writes in place and never reallocates; `length` is how many slots hold data. The next
    forward pass with this cache sees positions `length ..`, attends to everything stored,
    and appends its own keys/values.

    Prompts of different lengths share one cache by left padding: row b's first `pad[b]`
    slots are padding. No real token attends to them, and row b's positions count from its
    first real token, so a padded row computes what it would compute alone.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, device=None, dtype=torch.float32,
                 pad: torch.Tensor | None = None):
        self.block_size = cfg.block_size
        shape = (batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.reset(pad)

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    def reset(self, pad: torch.Tensor | None = None) -> None:
        """Empty the cache (the buffers stay); `pad`: (B,) padding slots per row, or None."""
        self.length = 0
        if pad is not None and not bool(pad.any()):
            pad = None  # nothing padded: take the mask-free fast paths
        self.pad = pad
        # key_ok[b, j]: slot j of row b holds a real token (computed once, sliced per step).
        self.key_ok = None if pad is None else \
            torch.arange(self.block_size, device=pad.device)[None, :] >= pad[:, None]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (e.g. drop finished sequences), in that order."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]
        if self.pad is not None:
            self.pad, self.key_ok = self.pad[rows], self.key_ok[rows]

    def repeat_rows(self, n: int) -> None:
        """Each row n times in a row (n samples of one prompt share its prefill)."""
        if n == 1:
            return
        self.k = [t.repeat_interleave(n, dim=0) for t in self.k]
        self.v = [t.repeat_interleave(n, dim=0) for t in self.v]
        if self.pad is not None:
            self.pad, self.key_ok = self.pad.repeat_interleave(n), self.key_ok.repeat_interleave(n, dim=0)

    def positions(self, T: int) -> torch.Tensor | None:
        """Position ids (B, T) of the next T tokens when rows are padded; None when they are
        simply `length .. length + T - 1` for every row."""
        if self.pad is None:
            return None
        new = torch.arange(self.length, self.length + T, device=self.pad.device)
        return (new[None, :] - self.pad[:, None]).clamp_(min=0)  # padding slots: any valid id

    def attention_mask(self, T: int) -> torch.Tensor | None:
        """Boolean mask (True = may attend) for the next T queries over all length + T keys.

        None where `scaled_dot_product_attention` needs none: one new token with no padding
        attends to everything stored; a first pass with no padding is plain `is_causal`.
        """
        L = self.length
        S = L + T
        if self.pad is None:
            if T == 1 or L == 0:
                return None
            keys = torch.arange(S, device=self.k[0].device)
            return keys[None, :] <= torch.arange(L, S, device=keys.device)[:, None]  # (T, S)
        key_ok = self.key_ok[:, :S]  # (B, S)
        if T == 1:
            return key_ok[:, None, None, :]
        keys = torch.arange(S, device=key_ok.device)
        queries = torch.arange(L, S, device=key_ok.device)
        causal = keys[None, :] <= queries[:, None]  # (T, S)
        # A padding query sees only padding (its output is never used) so no row is all-False,
        # which would make the softmax NaN.
        pad_query = queries[None, :] < self.pad[:, None]  # (B, T)
        mask = causal[None] & (key_ok[:, None, :] | pad_query[:, :, None])
        return mask[:, None]  # (B, 1, T, S)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values for `layer`; return all keys/values so far (views)."""
        L, T = self.length, k.shape[2]
        keys, values = self.k[layer], self.v[layer]
        keys.narrow(2, L, T).copy_(k)
        values.narrow(2, L, T).copy_(v)
        return keys.narrow(2, 0, L + T), values.narrow(2, 0, L + T)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        bias = cfg.arch == "gpt"
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=bias)  # q, k, v in one matmul
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                kv: tuple[KVCache, int, torch.Tensor | None] | None = None) -> torch.Tensor:
        """`kv`: (cache, this layer's index, attention mask) when decoding with a KV cache."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is None:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            cache, layer, mask = kv
            k, v = cache.store(layer, k, v)
            # No mask means: one new token over all keys, or a square causal first pass.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.arch == "modern"
        if self.swiglu:
            hidden = swiglu_hidden(cfg.n_embd)
            self.gate = nn.Linear(cfg.n_embd, hidden, bias=False)
            self.up = nn.Linear(cfg.n_embd, hidden, bias=False)
            self.down = nn.Linear(hidden, cfg.n_embd, bias=False)
        else:
            self.up = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
            self.down = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            h = F.silu(self.gate(x)) * self.up(x)
        else:
            h = F.gelu(self.up(x))
        return self.dropout(self.down(h))


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "modern":
        return nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope, kv=None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, kv)
        return x + self.mlp(self.norm2(x))


@contextmanager
def evaluating(model: nn.Module):
    """Dropout off inside the block (generating, scoring); the model's mode is restored after,
    so a caller's training loop may evaluate between its steps."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def tied_keys(cfg: ModelConfig) -> set[str]:
    """State-dict keys that name another key's tensor (a tied head): saved once, under the other."""
    return {"lm_head.weight"} if cfg.tied_head else set()


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (the trainer takes it from the data)")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.arch == "gpt" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tied_head:
            self.lm_head.weight = self.tok_emb.weight  # tied: one matrix reads and writes tokens
        if cfg.arch == "modern":
            cos, sin = rope_tables(cfg.block_size, cfg.n_embd // cfg.n_head, cfg.rope_theta)
            # Not saved with the weights: they are a function of the config.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        # The cache `forward` uses when none is passed (see `use_cache`); not part of the weights.
        self.active_cache: KVCache | None = None
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds variance, so shrink the last
        # projection of every branch by 1/sqrt(2 * n_layer) to keep the stream's scale.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())  # a tied matrix is counted once
        if exclude_embeddings:
            total -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                total -= self.pos_emb.weight.numel()
        return total

    def new_cache(self, batch_size: int, pad: torch.Tensor | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences on this model's device and dtype."""
        p = self.norm_f.weight  # not tok_emb: quantize.py may store that as int8
        return KVCache(self.config, batch_size, device=p.device, dtype=p.dtype, pad=pad)

    @contextmanager
    def use_cache(self, cache: KVCache):
        """Make every `forward(idx)` inside the block read and extend `cache`.

        The engine attaches the cache instead of passing it, so that anything wrapping
        `forward(idx, targets)` (hooks, a test's spy, a compiled module) keeps working.
        """
        previous, self.active_cache = self.active_cache, cache
        try:
            yield cache
        finally:
            self.active_cache = previous

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        """Logits (B, T, vocab) for token ids `idx` (B, T); plus the mean loss if `targets`.

        With a KV cache (`cache`, or the one attached by `use_cache`), `idx` are the tokens
        that follow the `cache.length` tokens already stored, and the cache is extended by them.
        """
        cache = cache if cache is not None else self.active_cache
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        positions = None if cache is None else cache.positions(T)  # (B, T) only for padded rows
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            if positions is None:
                positions = torch.arange(start, start + T, device=idx.device)
            x = x + self.pos_emb(positions)
        elif positions is None:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        else:  # per-row positions: (B, 1, T, d) broadcasts over the heads
            rope = (self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1))
        x = self.drop(x)
        if cache is None:
            for block in self.blocks:
                x = block(x, rope)
        else:
            mask = cache.attention_mask(T)  # one mask for every layer
            for i, block in enumerate(self.blocks):
                x = block(x, rope, (cache, i, mask))
            cache.length += T
        logits = self.lm_head(self.norm_f(x))
        if targets is None:
            return logits, None
        # The softmax in fp32 even under autocast: it is where low precision hurts the loss.
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 per matmul weight plus attention scores (PaLM appendix B).

        Embedding lookups cost nothing; the output head is a matmul even when tied.
        """
        cfg = self.config
        matmul_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * matmul_weights + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
