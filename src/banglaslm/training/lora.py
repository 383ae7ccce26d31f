"""LoRA through `peft`: low-rank adapters on chosen linear layers, the rest of the model frozen,
for models too big to fine-tune whole on a CPU.

`peft` injects its layers into our GPT in place (no wrapper, so the loop is unchanged). For
everything after training, a checkpoint holds the *merged* weights under the model's own names
(W + B·A·alpha/rank; `generate`, `serve`, `eval` and both exports read them as any run's) plus
the adapter itself (`adapter.*`), which is what a resumed run trains on. `write_adapter`
saves the adapter in peft's own folder format too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import ADAPTER_PREFIX, PEFT_PREFIX, adapter_only
from ..config import FinetuneConfig
from ..errors import UserError, bad_param
from ..fileio import atomic_write_json, write_safetensors
from ..model import GPT

ALL_LINEAR = "all-linear"  # every linear layer of the blocks (not the output head)


def _linear_names(model: GPT) -> set[str]:
    """The leaf names of the blocks' linear layers (qkv, proj, up, down, gate, ...)."""
    return {name.rsplit(".", 1)[-1] for name, m in model.blocks.named_modules() if isinstance(m, torch.nn.Linear)}


def targets(model: GPT, spec: str) -> list[str]:
    """The layer names `spec` asks for ("all-linear", or names separated by commas), checked."""
    available = _linear_names(model)
    wanted = sorted(available) if spec.strip() == ALL_LINEAR else [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in available]
    if unknown or not wanted:
        raise bad_param("finetune.lora_targets", f"names no linear layer of this model ({', '.join(unknown) or spec!r}); "
                        f"use {ALL_LINEAR} or some of: {', '.join(sorted(available))}")
    return wanted


class Lora:
    """The adapters attached to one model: their peft config, the merged weights, the adapter's
    tensors in and out."""

    def __init__(self, model: GPT, fc: FinetuneConfig):
        """Inject adapters into `model` in place (seeded by torch's generator), the rest frozen."""
        from peft import LoraConfig, inject_adapter_in_model

        if "lm_head" in fc.lora_targets:
            raise bad_param("finetune.lora_targets", "may not name lm_head: LoRA adapts the blocks' linear layers")
        self.config = LoraConfig(r=fc.lora_rank, lora_alpha=fc.lora_alpha, lora_dropout=fc.lora_dropout,
                                 target_modules=targets(model, fc.lora_targets), bias="none")
        self.model = inject_adapter_in_model(self.config, model)

    @torch.no_grad()
    def merged_tensors(self) -> dict[str, torch.Tensor]:
        """The model's weights under its plain names, each adapter merged in (the live model is
        not touched, so training goes on bit for bit)."""
        from peft.tuners.lora import LoraLayer

        layers = {name: m for name, m in self.model.named_modules() if isinstance(m, LoraLayer)}
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for name, tensor in self.model.state_dict().items():
            ptr = tensor.untyped_storage().data_ptr()
            if ".lora_" in name or ptr in seen:  # a tied tensor is stored once (safetensors forbids aliases)
                continue
            seen.add(ptr)
            plain = name.replace(".base_layer.", ".")
            owner = plain.rsplit(".", 1)[0]
            if owner in layers and plain.endswith(".weight"):
                tensor = tensor + layers[owner].get_delta_weight("default").to(tensor.dtype)
            out[plain] = tensor.detach().cpu().contiguous()
        return out

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's weights, named as in peft's files, prefixed `adapter.`."""
        from peft import get_peft_model_state_dict

        return {ADAPTER_PREFIX + k: v.detach().cpu().contiguous()
                for k, v in get_peft_model_state_dict(self.model).items()}

    def load(self, tensors: dict[str, torch.Tensor], where: Path) -> None:
        """Put a checkpoint's `adapter.*` tensors back."""
        from peft import set_peft_model_state_dict

        adapter = adapter_only(tensors)
        if not adapter:
            raise UserError(f"{where} holds no LoRA adapter; resume it with the settings it was trained with")
        result = set_peft_model_state_dict(self.model, adapter)
        if getattr(result, "unexpected_keys", None):
            raise UserError(f"the adapter in {where} does not fit the finetune.lora_* settings of this run")

    def write(self, folder: Path, tensors: dict[str, torch.Tensor]) -> None:
        """peft's adapter folder (adapter_config.json + adapter_model.safetensors, its keys as
        PeftModel.save_pretrained writes them) from a checkpoint's `adapter.*` tensors, each file
        written atomically: `PeftModel.from_pretrained(GPT, folder)` reads it."""
        folder.mkdir(parents=True, exist_ok=True)
        saved = {PEFT_PREFIX + k: v for k, v in adapter_only(tensors).items()}
        write_safetensors(folder / "adapter_model.safetensors", saved, {"format": "pt"})
        config = json.loads(json.dumps(self.config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
        atomic_write_json(folder / "adapter_config.json", config)

