"""`export --format peft`: a LoRA run's adapter, under the Hugging Face model's names, on the
HF model of its source computes what the run computes (through peft and transformers alone)."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import one_line_error, run_cli, set_args  # noqa: E402

from banglaslm.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from banglaslm.errors import UserError  # noqa: E402
from banglaslm.interop.hf_export import export_hf  # noqa: E402
from banglaslm.interop.peft_export import export_peft  # noqa: E402
from banglaslm.runfolder import RunFolder, load_model  # noqa: E402
from banglaslm.training.finetune import finetune, finetune_config  # noqa: E402

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
transformers.logging.set_verbosity_error()

# Few steps at a high learning rate: the adapters move far enough from zero (B starts at zero)
# that a wrong mapping shows in the logits.
LORA = {"train.max_iters": 6, "train.warmup_iters": 1, "train.eval_interval": 6, "train.eval_iters": 1,
        "train.learning_rate": 3e-2, "finetune.lora_rank": 4}


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    rows = [{"messages": [{"role": "user", "content": f"{n} এর পরে কোন সংখ্যা?"},
                          {"role": "assistant", "content": f"{n} এর পরে {n + 1}।"}]} for n in range(40)]
    path = tmp_path_factory.mktemp("chats") / "numbers.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def lora_run(source, chats, out, **settings):
    config = finetune_config(RunFolder(source).load_config(), overrides={**LORA, **settings})
    finetune(source, [str(chats)], out, config, progress=False, say=lambda line: None)
    return out


def with_peft(base_hf, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_hf), adapter).eval()


def logits_agree(run, peft_model) -> None:
    """The run's logits and the peft model's agree on random windows, and differ from the
    peft model's with its adapter off (the adapter matters: a wrong mapping would show)."""
    ours = load_model(run)
    x = torch.randint(0, ours.config.model.vocab_size, (2, ours.config.model.block_size))
    with torch.no_grad():
        mine, theirs = ours.model(x)[0], peft_model(x).logits
        with peft_model.disable_adapter():
            base = peft_model(x).logits
    torch.testing.assert_close(theirs, mine, atol=2e-5, rtol=1e-5)
    assert (base - mine).abs().max() > 1e-2


@pytest.mark.parametrize("arch,targets", [("modern", "all-linear"), ("gpt", "all-linear"), ("gpt", "qkv,proj")],
                         ids=["llama", "gpt2", "gpt2-attention-only"])
def test_adapter_on_the_exported_source_computes_what_the_run_computes(arch, targets, request, chats, tmp_path):
    source = request.getfixturevalue("trained_run" if arch == "modern" else "trained_gpt_run")
    run = lora_run(source, chats, tmp_path / "lora", **{"finetune.lora_targets": targets})
    base = export_hf(source, tmp_path / "base")
    out, advice = export_peft(run, tmp_path / "adapter")
    assert f"banglaslm export {source.resolve()} --checkpoint best --format hf" in advice
    model = with_peft(base, out)
    logits_agree(run, model)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["fan_in_fan_out"] == (arch == "gpt")
    if targets == "qkv,proj":  # GPT-2 has a c_proj in attn and one in mlp: only attn's is adapted
        assert sorted(config["target_modules"]) == ["attn.c_attn", "attn.c_proj"]
        assert not any(".mlp." in name for name, _ in model.named_modules() if name.endswith("lora_A"))


def test_adapter_of_a_run_fine_tuned_from_a_hugging_face_folder_goes_back_on_it(trained_run, chats, tmp_path, capsys):
    hf = export_hf(trained_run, tmp_path / "hf")
    run = tmp_path / "lora"
    code, err = run_cli(["finetune", hf, "--data", chats, "--out", run, *set_args(LORA)])
    assert code == 0, err
    from banglaslm.cli import main

    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "adapter")]) == 0
    assert f"the Hugging Face model it was fine-tuned from, {hf.resolve()}" in capsys.readouterr().out
    code, err = run_cli(["export", run, "--format", "peft", "--out", run / "adapter", "--overwrite"])
    one_line_error(code, err, "is inside the run folder")  # the run's own adapter (our names) is not replaced
    again = ["export", run, "--format", "peft", "--out", tmp_path / "adapter"]
    one_line_error(*run_cli(again), "is an earlier PEFT adapter folder; choose another PEFT adapter folder, or add --overwrite")
    assert run_cli([*again, "--overwrite"])[0] == 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(hf.resolve())
    logits_agree(run, with_peft(hf, tmp_path / "adapter"))
    # That folder replaced by other weights: said, and no longer named, so that peft's
    # AutoPeftModel does not load it as the base (it did, and computed something else).
    export_hf(run, hf, overwrite=True)
    _, advice = export_peft(run, tmp_path / "again")
    assert f"but {hf.resolve()} has changed since this run started from it: export the run whole" in advice
    assert f"banglaslm export {hf.resolve()}" not in advice  # the changed source's export was advised
    assert f"instead (banglaslm export {run} --format hf" in advice
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text())["base_model_name_or_path"] is None


def test_a_source_trained_further_is_named(trained_run, chats, tmp_path):
    """The adapter fits the weights the run started from: a source run whose checkpoint has
    changed since no longer holds them, and the command says so."""
    import shutil

    source = tmp_path / "source run"  # a space: the printed command quotes it
    shutil.copytree(trained_run, source)
    run = lora_run(source, chats, tmp_path / "lora")
    advice = export_peft(run, tmp_path / "a")[1]
    assert "(but" not in advice and f"banglaslm export '{source.resolve()}' --checkpoint best" in advice
    loaded = load_model(source)
    with torch.no_grad():
        next(loaded.model.parameters()).add_(1.0)
    save_checkpoint(loaded.checkpoint, loaded.model, load_checkpoint(loaded.checkpoint, weights_only=True).state)
    changed = export_peft(run, tmp_path / "b")[1]
    assert "has changed since this run started from it" in changed and "--checkpoint best" not in changed
    shutil.rmtree(source)
    assert f"but {source.resolve()} no longer exists" in export_peft(run, tmp_path / "c")[1]


def test_a_run_without_an_adapter_is_refused_and_nothing_is_written(trained_run, tmp_path):
    with pytest.raises(UserError, match="holds no LoRA adapter"):
        export_peft(trained_run, tmp_path / "adapter")
    code, err = run_cli(["export", trained_run, "--format", "peft", "--out", tmp_path / "adapter"])
    one_line_error(code, err, "export its weights with --format hf")
    assert not (tmp_path / "adapter").exists()
