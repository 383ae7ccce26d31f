"""A fused one-token decoding step for CPUs: csrc/decode.c, compiled on first use.

At batch 1 a decoding step is bound by reading every weight once, and PyTorch's eager mode
spends about as long again dispatching small operators. The C step does `GPT.forward`'s
arithmetic for one new token per row in one call, reading float32 weights or the int8 / bf16
ones of quantize.py. It runs only where it computes exactly what the model would (a plain `GPT`
on the CPU, nothing hooked or patched, a compiler at hand, BANGLASLM_KERNEL not "torch");
otherwise the engine uses `model(...)`. The build, the
numerics and the rules for stepping aside are in docs/generation.md.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..model import GPT, MLP, Block, CausalSelfAttention, KVCache
from ..quantize import QuantEmbedding, QuantLinear

SOURCE = Path(__file__).with_name("csrc") / "decode.c"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=gnu11", "-shared", "-fPIC"]

_f = ctypes.POINTER(ctypes.c_float)


class _Mat(ctypes.Structure):
    _fields_ = [("w", ctypes.c_void_p), ("scale", _f)]


class _Layer(ctypes.Structure):
    _fields_ = [("norm1_w", _f), ("norm1_b", _f), ("qkv", _Mat), ("qkv_b", _f), ("proj", _Mat), ("proj_b", _f),
                ("norm2_w", _f), ("norm2_b", _f), ("up", _Mat), ("up_b", _f), ("gate", _Mat), ("down", _Mat),
                ("down_b", _f)]


class _Model(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in (
        "modern", "n_layer", "n_head", "n_embd", "hidden", "vocab", "block", "wtype")] + [
        ("eps", ctypes.c_float), ("tok_emb", _Mat)] + [(name, _f) for name in (
        "pos_emb", "rope_cos", "rope_sin", "normf_w", "normf_b")] + [("head", _Mat), ("layers", ctypes.POINTER(_Layer))]


# How each kind of weight matrix is stored, as the C step numbers them (decode.c's F32, I8, BF16).
_WTYPE = {torch.float32: 0, torch.int8: 1, torch.bfloat16: 2}


def _matrix(module: torch.nn.Module) -> torch.Tensor:
    """The stored weight matrix of a Linear, an Embedding or their quantized forms."""
    return module.qweight if isinstance(module, (QuantLinear, QuantEmbedding)) else module.weight


def _mat(module: torch.nn.Module | None) -> _Mat:
    if module is None:
        return _Mat(None, None)
    return _Mat(_matrix(module).data_ptr(), _ptr(getattr(module, "scale", None)))


def _cpu_flags() -> str:
    """This CPU's feature flags: -march=native code built on one machine may not run on another
    that shares the home directory."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    return Path(os.environ.get("BANGLASLM_CACHE") or Path.home() / ".cache" / "banglaslm") / "kernels"


def build(compiler: str | None = None) -> Path:
    """Compile csrc/decode.c for this machine (or find it already built); the library's path.
    Raises RuntimeError with the compiler's message when the build fails."""
    cc = shlex.split(compiler or os.environ.get("CC") or "cc")  # CC may carry arguments ("ccache gcc")
    if not cc or shutil.which(cc[0]) is None:
        raise RuntimeError(f"no C compiler found ({' '.join(cc)!r}); install gcc or set CC")
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *cc, version, " ".join(FLAGS), _cpu_flags()]).encode())
    target = _cache_dir() / f"decode-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([*cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cc)} failed: {done.stderr.strip()[:500]}")
        os.chmod(tmp, 0o755)  # mkstemp's 0600 would keep others sharing the cache from loading it
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(path: Path) -> ctypes.CDLL:
    """The library built at `path`, its entry points typed for ctypes."""
    lib = ctypes.CDLL(str(path))
    lib.bslm_decode_step.restype = ctypes.c_int
    lib.bslm_decode_step.argtypes = [  # model, B, length, pad, slot, cache_rows, tokens,
        ctypes.POINTER(_Model), ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,  # k, v, logits,
        ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,  # scratch, threads
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32]
    lib.bslm_scratch_floats.restype = ctypes.c_int64
    lib.bslm_scratch_floats.argtypes = [ctypes.POINTER(_Model), ctypes.c_int32, ctypes.c_int32]
    return lib


_library: ctypes.CDLL | None = None
_failure: str | None = None


def library() -> ctypes.CDLL | None:
    """The compiled kernel, built and loaded once per process; None (reported once) when that
    is impossible here."""
    global _library, _failure
    if _library is None and _failure is None:
        try:
            _library = load(build())
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # SubprocessError: a time-out
            _failure = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"banglaslm: the C decoding kernel is unavailable ({_failure}); generating with "
                  "PyTorch alone (slower at batch 1)", file=sys.stderr)
    return _library


# The modules a plain GPT is made of, with the forward each class was defined with: the kernel
# computes exactly what they compute, and nothing else.
_PLAIN = {cls: cls.forward for cls in (GPT, Block, CausalSelfAttention, MLP, torch.nn.Linear, torch.nn.Embedding,
                                        QuantLinear, QuantEmbedding, torch.nn.LayerNorm, torch.nn.RMSNorm,
                                        torch.nn.Dropout, torch.nn.ModuleList)}


def _plain(model: torch.nn.Module) -> bool:
    """Whether `model` computes exactly `GPT.forward`: only the usual modules with their own
    forward methods, nothing hooked, patched or parametrized (e.g. LoRA by parametrization,
    whose weights are recomputed on every access), and no autocast around the call."""
    from torch.nn.modules import module as nn_module
    from torch.nn.utils import parametrize

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return all(type(m) in _PLAIN and type(m).forward is _PLAIN[type(m)] and "forward" not in vars(m)
               and not m._forward_hooks and not m._forward_pre_hooks and not parametrize.is_parametrized(m)
               for m in model.modules())


def _one_storage(model: GPT) -> bool:
    """Whether every weight matrix is stored the same way the C step can read (float32, or one of
    quantize.py's kinds) and every other tensor is float32."""
    matrices = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding, QuantLinear,
                                                             QuantEmbedding)) and m is not model.pos_emb]
    kinds = {_matrix(m).dtype for m in matrices}
    if len(kinds) != 1 or next(iter(kinds)) not in _WTYPE:
        return False
    stored = {id(_matrix(m)) for m in matrices}
    return all(t.dtype == torch.float32 for t in list(model.parameters()) + list(model.buffers()) if id(t) not in stored)


def _int64(t: torch.Tensor) -> torch.Tensor:
    """`t` as contiguous int64 on the CPU (usually it already is: then no copy, no call)."""
    if t.dtype == torch.int64 and t.device.type == "cpu" and t.is_contiguous():
        return t
    return t.to(device="cpu", dtype=torch.int64).contiguous()


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.cast(t.data_ptr(), _f)


class CpuDecoder:
    """Decode steps of one model through the C kernel; build one per generation run
    (`for_model`), since it holds pointers to the model's current weights."""

    def __init__(self, model: GPT, lib: ctypes.CDLL):
        self.lib, self.model = lib, model
        # The C side holds raw pointers: keep every tensor they point into alive for as long as
        # this decoder lives, even if the model's weights are replaced meanwhile.
        self.tensors = tuple(model.parameters()) + tuple(model.buffers())
        cfg = model.config
        self.modern = cfg.arch == "modern"
        b = model.blocks
        # Keep the structs (and so the pointers' owners' addresses) alive with the decoder.
        self.layers = (_Layer * cfg.n_layer)()
        for layer, block in zip(self.layers, b):
            a, mlp = block.attn, block.mlp
            layer.norm1_w, layer.norm1_b = _ptr(block.norm1.weight), _ptr(getattr(block.norm1, "bias", None))
            layer.qkv, layer.qkv_b = _mat(a.qkv), _ptr(a.qkv.bias)
            layer.proj, layer.proj_b = _mat(a.proj), _ptr(a.proj.bias)
            layer.norm2_w, layer.norm2_b = _ptr(block.norm2.weight), _ptr(getattr(block.norm2, "bias", None))
            layer.up, layer.up_b = _mat(mlp.up), _ptr(mlp.up.bias)
            layer.gate = _mat(mlp.gate if self.modern else None)
            layer.down, layer.down_b = _mat(mlp.down), _ptr(mlp.down.bias)
        hidden = _matrix(b[0].mlp.down).shape[1]
        eps = b[0].norm1.eps if b[0].norm1.eps is not None else torch.finfo(torch.float32).eps
        self.struct = _Model(
            int(self.modern), cfg.n_layer, cfg.n_head, cfg.n_embd, hidden, cfg.vocab_size, cfg.block_size,
            _WTYPE[_matrix(model.lm_head).dtype], eps, _mat(model.tok_emb),
            _ptr(model.pos_emb.weight if model.pos_emb is not None else None),
            _ptr(model.rope_cos if self.modern else None), _ptr(model.rope_sin if self.modern else None),
            _ptr(model.norm_f.weight), _ptr(getattr(model.norm_f, "bias", None)), _mat(model.lm_head),
            self.layers)
        self.ref = ctypes.byref(self.struct)
        self.threads = torch.get_num_threads()
        self.weight_bytes = _matrix(model.lm_head).element_size()  # per stored weight: 4, 2 or 1
        self.scratch = torch.empty(0, dtype=torch.float32, device="cpu")
        self._scratch_need: dict[int, int] = {}
        self._lengths = torch.empty(0, dtype=torch.int64)
        # What every cache row must look like: (n_head, block, head_dim).
        self.row_shape = (cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self._cache_lists: tuple | None = None

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> CpuDecoder | None:
        """A decoder for `model` when the kernel can run it exactly (module docstring), else None."""
        if os.environ.get("BANGLASLM_KERNEL", "auto") == "torch" or type(model) is not GPT:
            return None
        tensors = list(model.parameters()) + list(model.buffers())
        if any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors) or not _one_storage(model):
            return None
        if not _plain(model):
            return None
        lib = library()
        return None if lib is None else cls(model, lib)

    def step(self, cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) of the next token after `tokens` (B,), which follow the cache's
        `length` stored tokens; stores their keys/values and advances the cache, like
        `model(tokens[:, None])` with the cache attached."""
        B = tokens.shape[0]
        if tokens.dim() != 1 or cache.batch_size != B or cache.k[0].shape[1:] != self.row_shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} do not fit a cache of shape {tuple(cache.k[0].shape)}")
        if self._lengths.numel() != B:
            self._lengths = torch.empty(B, dtype=torch.int64)
        self._lengths.fill_(cache.length)
        k, v = self._pointers(cache.k, cache.v)
        logits = self._call(B, self._lengths, cache.pad, None, B, tokens, k, v)
        cache.length += 1
        return logits

    def step_rows(self, keys: list[torch.Tensor], values: list[torch.Tensor], tokens: torch.Tensor,
                  lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Like `step` for rows that each have their own length and cache row: row b's token
        `tokens[b]` follows the `lengths[b]` tokens stored in row `slots[b]` of every layer's
        `keys`/`values` (rows, n_head, block, head_dim), at position lengths[b]. Stores its
        key/value there (the caller advances its lengths); logits (B, vocab)."""
        B = tokens.shape[0]
        if tokens.dim() != 1 or lengths.shape != (B,) or slots.shape != (B,) or keys[0].shape[1:] != self.row_shape:
            raise ValueError(f"tokens {tuple(tokens.shape)}, lengths {tuple(lengths.shape)} and slots "
                             f"{tuple(slots.shape)} do not fit caches of shape {tuple(keys[0].shape)}")
        k, v = self._pointers(keys, values)
        return self._call(B, lengths, None, slots, keys[0].shape[0], tokens, k, v)

    def _pointers(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        """The C arrays of the per-layer cache pointers, checked and built again only when the
        lists are new (KVCache.select / repeat_rows replace them; storing in place does not)."""
        if self._cache_lists is None or self._cache_lists[0] is not keys or self._cache_lists[1] is not values:
            if not all(t.is_contiguous() and t.dtype == torch.float32 and t.device.type == "cpu"
                       and t.shape == keys[0].shape for t in keys + values):
                raise ValueError("the KV cache must be contiguous float32 on the CPU for the C kernel")
            self._arrays = ((ctypes.c_void_p * len(keys))(*[t.data_ptr() for t in keys]),
                            (ctypes.c_void_p * len(values))(*[t.data_ptr() for t in values]))
            self._cache_lists = (keys, values)  # held, so their ids cannot be reused meanwhile
        return self._arrays

    def _call(self, B: int, lengths, pad, slots, cache_rows: int, tokens, k, v) -> torch.Tensor:
        tokens, lengths = _int64(tokens), _int64(lengths)
        pad = None if pad is None else _int64(pad)
        slots = None if slots is None else _int64(slots)
        if B not in self._scratch_need:
            self._scratch_need[B] = self.lib.bslm_scratch_floats(self.ref, B, self.threads)
        need = self._scratch_need[B]
        if self.scratch.numel() < need:  # float32 on the CPU whatever torch's defaults are
            self.scratch = torch.empty(need, dtype=torch.float32, device="cpu")
        logits = torch.empty(B, self.struct.vocab, dtype=torch.float32, device="cpu")
        status = self.lib.bslm_decode_step(
            self.ref, B, lengths.data_ptr(), None if pad is None else pad.data_ptr(),
            None if slots is None else slots.data_ptr(), cache_rows, tokens.data_ptr(), k, v,
            logits.data_ptr(), self.scratch.data_ptr(), self.threads)
        if status != 0:  # the engine never asks for these; a bug if it happens
            raise ValueError(f"C decode step refused its input (status {status}: lengths {lengths.tolist()}, "
                             f"block {self.struct.block}, tokens {tokens.tolist()})")
        return logits
