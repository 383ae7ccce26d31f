"""A LoRA run's adapter as a peft folder for the Hugging Face model of its source, so that
`PeftModel.from_pretrained(base, OUT)` computes what the run computes, with no banglaslm code.

The adapter in RUN_DIR/adapter/ names our modules (the fused `qkv`); this one names the HF
model's, through the same table as the weights (`hf_names`). Our fused q/k/v adapter becomes
three that share A and cut B by rows, which is exact: each projection's update is its rows of
B·A. GPT-2's Conv1D stores its weights as (in, out): peft's `fan_in_fan_out` says so and the
adapter's tensors stay as they are. docs/interop.md, "LoRA adapters", has the how and the why.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path
from typing import Annotated

import torch

from ..checkpoint import PEFT_PREFIX, Checkpoint, load_checkpoint
from ..config import FinetuneConfig, ModelConfig, Opt
from ..errors import UserError
from ..fileio import staged_folder, write_safetensors
from ..runfolder import RunFolder, Which, load_model
from .hf_export import check_exportable
from .hf_import import import_hf
from .hf_names import QKV, tensor_map

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def peft_tensors(adapter: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our adapter's tensors ("blocks.0.attn.qkv.lora_A.weight", ...) under the HF model's
    names, as peft saves them; UserError if one has no place there."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for ours, theirs, layout in tensor_map(cfg):
        stem = ours.removesuffix(".weight")
        a_key, b_key = f"{stem}.lora_A.weight", f"{stem}.lora_B.weight"
        if stem == ours or a_key not in adapter:
            continue
        used.update((a_key, b_key))
        b_parts = adapter[b_key].split(cfg.n_embd, dim=0) if layout == QKV else [adapter[b_key]]
        for name, b in zip(theirs, b_parts):
            module = PEFT_PREFIX + name.removesuffix(".weight")
            out[f"{module}.lora_A.weight"] = adapter[a_key].clone()  # shared A: stored once per module
            out[f"{module}.lora_B.weight"] = b.contiguous()
    unplaced = sorted(set(adapter) - used)
    if unplaced:
        raise UserError(f"cannot export the adapter: {unplaced[0]} has no place in the Hugging Face model")
    return out


def target_modules(tensors: dict[str, torch.Tensor]) -> list[str]:
    """peft's target_modules for `tensors`: each module's last two name parts ("self_attn.q_proj",
    "mlp.c_proj"), which peft matches as name suffixes (GPT-2 has a c_proj in attn and in mlp)."""
    return sorted({".".join(k.split(".")[-4:-2]) for k in tensors})


def adapter_config(ckpt: Checkpoint, cfg_model: ModelConfig, finetune: FinetuneConfig,
                   tensors: dict[str, torch.Tensor], base_holds: bool):
    """peft's LoraConfig of the adapter, for the source's HF model: named when it is a folder
    that still holds the weights the run started from (`base_holds`), so that peft's
    AutoPeftModel loads it, and never another model."""
    from peft import LoraConfig

    source = ckpt.state.get("init_from") or {}
    named = source.get("path") if source.get("imported") and base_holds else None
    return LoraConfig(r=finetune.lora_rank, lora_alpha=finetune.lora_alpha, lora_dropout=finetune.lora_dropout,
                      target_modules=target_modules(tensors), bias="none", task_type="CAUSAL_LM",
                      fan_in_fan_out=cfg_model.arch == "gpt", inference_mode=True, base_model_name_or_path=named)


def _source_problem(source: dict) -> str:
    """Why the source no longer holds the weights the run started from ("" while it does): the
    adapter fits only those. A Hugging Face folder is read as `finetune` read it."""
    path, recorded = source.get("path"), source.get("weights")
    if not path or not recorded:
        return ""
    if not Path(path).exists():
        return f"{path} no longer exists"
    try:
        if source.get("imported"):
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = RunFolder(import_hf(path, Path(tmp) / "run")).checkpoint("best")
                now = load_checkpoint(checkpoint, weights_only=True).fingerprint()
        else:
            now = load_checkpoint(RunFolder(path).checkpoint(Path(source.get("checkpoint", "best")).stem),
                                  weights_only=True).fingerprint()
    except UserError:
        return f"{path} no longer holds a model banglaslm can read"
    return "" if now == recorded else f"{path} has changed since this run started from it"


def base_advice(ckpt: Checkpoint, problem: str, run_dir: str | Path = "RUN") -> str:
    """Where the model the adapter goes on is, in words, for the command's last line; when the
    source no longer holds it (`problem`, from `_source_problem`), what to do instead (an export
    of the changed source, which it used to advise, computes something else)."""
    source = ckpt.state.get("init_from") or {}
    where = str(source.get("path", "SOURCE"))
    if problem:
        return (f"it fits only the weights the run started from, but {problem}: export the run whole instead "
                f"(banglaslm export {shlex.quote(str(run_dir))} --format hf: the adapter merged in, no base needed), "
                "or put it on a Hugging Face export of those weights made before that")
    if source.get("imported"):
        advice = f"put it on the Hugging Face model it was fine-tuned from, {where}"
    else:
        advice = (f"put it on the Hugging Face export of the run it was fine-tuned from: banglaslm export "
                  f"{shlex.quote(where)} --checkpoint {Path(source.get('checkpoint', 'best')).stem} --format hf "
                  "--out BASE")
    return advice


def _is_peft_export(folder: Path) -> bool:
    return {p.name for p in folder.iterdir()} <= {ADAPTER_CONFIG, ADAPTER_WEIGHTS}


def export_peft(
    run_dir: str | Path, out_dir: str | Path,
    which: Which = "best",
    overwrite: Annotated[bool, Opt("replace an existing, non-empty output folder")] = False,
) -> tuple[Path, str]:
    """Write the LoRA adapter of the run's `which` checkpoint as a peft folder for the source's
    Hugging Face model; returns (`out_dir`, where that model is, in words). UserError (nothing
    written) for a run without a LoRA adapter or a model the HF classes cannot represent."""
    if Path(run_dir).resolve() in Path(out_dir).resolve().parents:  # RUN/adapter/ is the run's own adapter
        raise UserError(f"the export folder {out_dir} is inside the run folder {run_dir}; write it somewhere else")
    loaded = load_model(run_dir, which)
    config = loaded.config
    check_exportable(config.model)
    ckpt = load_checkpoint(loaded.checkpoint)
    adapter = ckpt.adapter()
    if not adapter:
        raise UserError(f"{run_dir} holds no LoRA adapter (it was not fine-tuned with finetune.lora_rank); "
                        "export its weights with --format hf")
    tensors = peft_tensors(adapter, config.model)
    problem = _source_problem(ckpt.state.get("init_from") or {})
    peft_config = adapter_config(ckpt, config.model, config.finetune, tensors, base_holds=not problem)
    with staged_folder(out_dir, "PEFT adapter folder", replaceable=_is_peft_export, overwrite=overwrite) as tmp:
        peft_config.save_pretrained(str(tmp))  # adapter_config.json
        write_safetensors(tmp / ADAPTER_WEIGHTS, tensors, {"format": "pt"})
    return Path(out_dir), base_advice(ckpt, problem, run_dir)
