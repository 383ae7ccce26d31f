"""Hugging Face export / import: the exported model computes what ours computes, offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from banglaslm.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from banglaslm.config import ModelConfig  # noqa: E402
from banglaslm.data.corpus import corpus_files  # noqa: E402
from banglaslm.errors import UserError  # noqa: E402
from banglaslm.interop.hf_export import check_exportable, export_hf  # noqa: E402
from banglaslm.interop.hf_import import import_hf  # noqa: E402
from banglaslm.model import swiglu_hidden  # noqa: E402
from banglaslm.runfolder import RunFolder, load_model  # noqa: E402
from banglaslm.text import normalize  # noqa: E402

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

EXPECTED_CLASS = {"modern": "LlamaForCausalLM", "gpt": "GPT2LMHeadModel", "untied": "LlamaForCausalLM"}
ARCHS = ["modern", "gpt", "untied"]  # "untied": modern with `model.tie_embeddings=false`
HF_FILES = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"}
# Everything normalize() touches: \r\n, decomposed nukta letters, old khanda-ta, stray and
# repeated joiners, BOM / soft hyphen / zero-width space, tabs, NBSP, space and newline runs.
MESSY = ("  উ\u09a4\u09cd\u200dসব  \r\nড\u09bc\u09be\u0995\u09be\tঢ\u09bc\u09be\u0995\u09be  "
         "য\u09bc\u200d\u200cা\ufeff\u00ad\u200b ক্\u200c\u200dষ র\u200d্য\n\n\n\n  শেষ\u00a0"
         "<|endoftext|>\u3000কে\u09c7\u09be \u09fe্ \r")


@pytest.fixture(scope="module")
def runs(trained_run, trained_gpt_run, trained_untied_run) -> dict[str, Path]:
    return {"modern": trained_run, "gpt": trained_gpt_run, "untied": trained_untied_run}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {arch: export_hf(run, root / arch) for arch, run in runs.items()}


@pytest.fixture(scope="module")
def hf_models(exported):
    from transformers import AutoModelForCausalLM

    return {arch: AutoModelForCausalLM.from_pretrained(path).eval() for arch, path in exported.items()}


@pytest.fixture(scope="module")
def hf_tokenizer(exported):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(exported["modern"])


def bangla_windows(tokenizer, block_size: int, n: int = 4) -> torch.Tensor:
    """`n` block-size windows of real Bangla text from the embedded corpus."""
    ids = tokenizer.encode(corpus_files()[3].read_text(encoding="utf-8"))
    assert len(ids) >= n * block_size
    return torch.tensor([ids[i * block_size:(i + 1) * block_size] for i in range(n)])


def greedy(model, prompt: torch.Tensor, steps: int) -> list[int]:
    """Our uncached greedy decoding: argmax of the full forward pass, one token at a time."""
    seq = prompt
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(seq)[0][0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    return seq[0, prompt.shape[1]:].tolist()


def perturbed_copy(run: Path, dst: Path, seed: int = 0) -> Path:
    """A copy of `run` with noisy weights: a 40-step model greedily repeats one token, which
    would make the generation test trivially true."""
    shutil.copytree(run, dst)
    loaded = load_model(dst)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    ckpt = load_checkpoint(loaded.checkpoint, weights_only=True)
    save_checkpoint(loaded.checkpoint, loaded.model, ckpt.state)
    return dst


# ---- the exported folder -----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_auto_classes_and_config(arch, exported, hf_models, runs):
    path, model = exported[arch], hf_models[arch]
    assert {p.name for p in path.iterdir()} == HF_FILES
    mask = os.umask(0)
    os.umask(mask)
    # every file as readable as the umask makes new files (safetensors alone writes the weights 0600)
    assert {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()} == {name: 0o666 & ~mask for name in HF_FILES}
    assert type(model).__name__ == EXPECTED_CLASS[arch]
    ours = load_model(runs[arch])
    cfg, eod = ours.config.model, ours.tokenizer.eod_id
    assert model.config.vocab_size == cfg.vocab_size
    assert model.config.bos_token_id == model.config.eos_token_id == eod
    assert model.generation_config.eos_token_id == eod
    assert model.config.pad_token_id is None  # ours has no padding token (training packs documents)
    assert model.config.tie_word_embeddings is (arch == "modern")
    embedding = model.get_input_embeddings().weight
    if arch == "modern":
        assert model.lm_head.weight.data_ptr() == embedding.data_ptr()
    else:  # the untied head survived loading: transformers did not re-tie it to the embedding
        assert model.lm_head.weight.data_ptr() != embedding.data_ptr()
        assert not torch.equal(model.lm_head.weight, embedding)
        assert torch.equal(model.lm_head.weight, ours.model.lm_head.weight)
    if arch == "gpt":
        assert model.config.activation_function == "gelu"
        assert model.config.n_positions == cfg.block_size
    else:
        assert model.config.intermediate_size == swiglu_hidden(cfg.n_embd)
        assert model.config.num_key_value_heads == model.config.num_attention_heads == cfg.n_head
        assert model.config.rope_parameters["rope_theta"] == cfg.rope_theta
        assert model.config.max_position_embeddings == cfg.block_size


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_on_bangla_text(arch, runs, hf_models):
    ours = load_model(runs[arch])
    x = bangla_windows(ours.tokenizer, ours.config.model.block_size)
    with torch.no_grad():
        expected = ours.model(x)[0]
        got = hf_models[arch](x).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_is_token_identical(arch, runs, tmp_path):
    from transformers import AutoModelForCausalLM

    run = perturbed_copy(runs[arch], tmp_path / "run")
    hf = AutoModelForCausalLM.from_pretrained(export_hf(run, tmp_path / "hf")).eval()
    ours = load_model(run)
    prompt = torch.tensor([ours.tokenizer.encode("আমার সোনার বাংলা, আমি তোমায় ভালোবাসি।")[:8]])
    expected = greedy(ours.model, prompt, 20)
    assert len(set(expected)) > 5  # a real test, not one token repeated
    if ours.tokenizer.eod_id in expected:  # HF stops at end-of-document
        expected = expected[:expected.index(ours.tokenizer.eod_id) + 1]
    with torch.no_grad():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    assert out[0, prompt.shape[1]:].tolist() == expected



def test_a_padded_vocabulary_is_never_sampled(runs, tmp_path):
    """model.vocab_size above the tokenizer's (BanglaT5's 32,100 with a smaller tokenizer): our
    engine masks the rows no token maps to, transformers sampled them (ids it cannot decode) and
    its greedy text differed. The export's generation config now suppresses them."""
    from transformers import AutoModelForCausalLM

    from banglaslm import SamplingParams
    from banglaslm.generation.engine import Engine
    from banglaslm.model import GPT

    run = perturbed_copy(runs["modern"], tmp_path / "run", seed=2)
    loaded, extra = load_model(run), 9
    config = loaded.config
    config.model.vocab_size += extra
    padded = GPT(config.model)
    state = loaded.model.state_dict()
    for name in ("tok_emb.weight", "lm_head.weight"):  # each padded row a real one, scaled up: raw argmax picks it
        state[name] = torch.cat([state[name], 4 * state[name][:extra]])
    padded.load_state_dict(state)
    RunFolder(run).write_header(config, loaded.tokenizer)
    state = load_checkpoint(loaded.checkpoint, weights_only=True).state
    save_checkpoint(loaded.checkpoint, padded, {**state, "config": config.to_dict()})
    ours = load_model(run)
    text = "আমার সোনার বাংলা"
    [[expected]] = Engine(ours.model, ours.tokenizer).generate([text], SamplingParams(temperature=0, max_new_tokens=12))
    prompt = torch.tensor([[ours.tokenizer.eod_id, *ours.tokenizer.encode(text)]])  # as the engine reads it
    assert max(greedy(ours.model, prompt, 12)) >= ours.tokenizer.vocab_size  # unmasked, a padded row wins
    hf = AutoModelForCausalLM.from_pretrained(export_hf(run, tmp_path / "hf")).eval()
    with torch.no_grad():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
        sampled = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=True)
    assert out[0, prompt.shape[1]:].tolist()[:len(expected.token_ids)] == expected.token_ids
    assert max(sampled[0].tolist()) < ours.tokenizer.vocab_size


def test_prompt_from_text_continues_as_banglaslm_generate(runs, tmp_path):
    """The transformers user's way, `model.generate(**tokenizer(text))`, gives `banglaslm
    generate`'s greedy continuation: the tokenizer puts the end-of-document token first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from banglaslm import SamplingParams
    from banglaslm.generation.engine import Engine

    run = perturbed_copy(runs["modern"], tmp_path / "run", seed=1)
    folder = export_hf(run, tmp_path / "hf")
    hf, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    loaded, text = load_model(run), "আমার সোনার বাংলা"
    [[ours]] = Engine(loaded.model, loaded.tokenizer).generate([text], SamplingParams(temperature=0, max_new_tokens=12))
    assert len(set(ours.token_ids)) > 3  # a real test, not one token repeated
    with torch.no_grad():
        out = hf.generate(**tok(text, return_tensors="pt"), max_new_tokens=12, do_sample=False)
    prompt = tok(text)["input_ids"]
    assert out[0, :len(prompt)].tolist() == prompt and prompt[0] == loaded.tokenizer.eod_id
    assert out[0, len(prompt):].tolist()[:len(ours.token_ids)] == ours.token_ids

@pytest.mark.parametrize("arch", ARCHS)
def test_generate_with_the_exports_own_defaults_stays_within_the_block(arch, runs, hf_models, hf_tokenizer):
    """generation_config.json asked for 200 new tokens: GPT-2's `model.generate(**tokenizer(text))`
    ran past its position table (IndexError) on any block under 200 tokens."""
    model, block = hf_models[arch], load_model(runs[arch]).config.model.block_size
    torch.manual_seed(0)
    with torch.no_grad():  # the generation config's own sampling, length and end token
        out = model.generate(**hf_tokenizer("আমার সোনার বাংলা", return_tensors="pt"))
    eod = model.generation_config.eos_token_id
    assert out.shape[1] == block or out[0, -1].item() == eod, out.shape  # stopped at the block or at its end


# ---- the tokenizer -----------------------------------------------------------------------------
def test_tokenizer_gives_our_ids(hf_tokenizer, trained_run):
    ours = load_model(trained_run).tokenizer
    assert type(hf_tokenizer).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend")
    assert hf_tokenizer.eos_token_id == hf_tokenizer.bos_token_id == ours.eod_id
    texts = [p.read_text(encoding="utf-8") for p in corpus_files()] + [MESSY]
    for text in texts:  # raw text: the exported normalizer does what normalize() does
        ids = hf_tokenizer(text, split_special_tokens=True, add_special_tokens=False)["input_ids"]
        assert ids == ours.encode(text)
    # By default the end-of-document token goes first, as before every training document.
    assert hf_tokenizer(texts[0])["input_ids"] == [ours.eod_id, *ours.encode(texts[0])]
    # A literal "<|endoftext|>" in text is text for ours; transformers makes it the control token
    # unless asked not to (the exported chat template needs that: it writes the token as text).
    plain = {"add_special_tokens": False}
    assert ours.eod_id not in hf_tokenizer(MESSY, split_special_tokens=True, **plain)["input_ids"]
    assert ours.eod_id in hf_tokenizer(MESSY, **plain)["input_ids"]
    assert hf_tokenizer.decode(ours.encode(texts[0])) == normalize(texts[0])


_ALPHABET = list("কতডঢযরষসা িেোৌ্ঁ়ৎ\u09fe\u200c\u200d\u200b\ufeff\u00ad\t\r\n\x0b\x0c\x85\u2028\u2029"
                 "\u00a0\u3000\x00\x7f\u202e a.।") + ["\u09a1\u09bc", "\u09a4\u09cd\u200d", "\r\n", "\u09c7\u09be"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_ALPHABET), max_size=24).map("".join))
def test_exported_normalizer_equals_normalize(exported_normalizer, text):
    assert exported_normalizer.normalize_str(text) == normalize(text)


@pytest.fixture(scope="module")
def exported_normalizer(exported):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(exported["modern"] / "tokenizer.json")).normalizer


# ---- import ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_is_bit_identical(arch, runs, exported, tmp_path):
    back = load_model(import_hf(exported[arch], tmp_path / "run"))
    ours = load_model(runs[arch])
    a, b = ours.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert back.config == ours.config
    assert back.tokenizer.sha256 == ours.tokenizer.sha256  # the added normalizer is removed again
    x = bangla_windows(ours.tokenizer, ours.config.model.block_size, n=2)
    with torch.no_grad():
        assert torch.equal(ours.model(x)[0], back.model(x)[0])


def test_import_keeps_the_exporting_runs_train_and_finetune_settings(exported, tmp_path):
    """A chat-tuned export came back with the default finetune settings (epochs 3.0 for its 0.5)."""
    import shutil

    folder = shutil.copytree(exported["modern"], tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["banglaslm"]["run_config"]["finetune"]["epochs"] = 0.5
    config["banglaslm"]["run_config"]["train"]["batch_size"] = 3
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    back = load_model(import_hf(folder, tmp_path / "run")).config
    assert back.finetune.epochs == 0.5 and back.train.batch_size == 3


def test_imported_run_continues_training(exported, data_dir, tmp_path):
    from banglaslm.training.trainer import train

    run = import_hf(exported["modern"], tmp_path / "run")
    result = train(data_dir, run, resume=True, max_iters=5, progress=False)
    assert result.iterations == 5
    assert load_model(run, "latest").iteration == 5


@pytest.mark.parametrize("arch", ["modern", "gpt"])
@pytest.mark.parametrize("tied", [True, False])
def test_imports_what_transformers_itself_saved(arch, tied, tmp_path, trained_run):
    """A checkpoint that transformers' save_pretrained wrote (not we) imports and computes the
    same, its head tied or not as its config says."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = load_model(trained_run).tokenizer.vocab_size
    if arch == "modern":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab, hidden_size=48, intermediate_size=swiglu_hidden(48), num_hidden_layers=2,
            num_attention_heads=3, num_key_value_heads=3, max_position_embeddings=16, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=tied))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=48, n_layer=2, n_head=3, n_positions=16,
                                           activation_function="gelu", tie_word_embeddings=tied))
    model.eval().save_pretrained(tmp_path / "hf")
    shutil.copy(trained_run / "tokenizer.json", tmp_path / "hf" / "tokenizer.json")
    back = load_model(import_hf(tmp_path / "hf", tmp_path / "run"))
    assert back.config.model.arch == arch
    assert back.config.model.tied_head is tied
    assert (back.model.lm_head.weight is back.model.tok_emb.weight) is tied
    x = torch.randint(0, vocab, (2, 16))
    with torch.no_grad():
        assert (back.model(x)[0] - model(x).logits).abs().max().item() < 1e-4


# ---- refusals ----------------------------------------------------------------------------------
LLAMA_REFUSALS = {
    "gqa": {"num_key_value_heads": 1},
    "bias": {"attention_bias": True},
    "mlp_bias": {"mlp_bias": True},
    "rope_scaling": {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
    "rope_scaling_v4": {"rope_scaling": {"type": "dynamic", "factor": 2.0}},
    "head_dim": {"head_dim": 8},
    "width": {"intermediate_size": 100},
    "act": {"hidden_act": "gelu"},
    "untied_without_head": {"tie_word_embeddings": False},
    "type": {"model_type": "mistral"},
}
GPT2_REFUSALS = {
    "gelu_new": {"activation_function": "gelu_new"},
    "n_inner": {"n_inner": 7},
    "layer_scaled": {"scale_attn_by_inverse_layer_idx": True},
    "cross": {"add_cross_attention": True},
}


@pytest.mark.parametrize("arch,change", [("modern", c) for c in LLAMA_REFUSALS.values()]
                         + [("gpt", c) for c in GPT2_REFUSALS.values()],
                         ids=list(LLAMA_REFUSALS) + list(GPT2_REFUSALS))
def test_import_refuses_what_it_cannot_represent(arch, change, exported, tmp_path):
    hf = tmp_path / "hf"
    shutil.copytree(exported[arch], hf)
    config = json.loads((hf / "config.json").read_text(encoding="utf-8"))
    config.update(change)
    (hf / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(UserError, match="cannot import"):
        import_hf(hf, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_import_refuses_tensors_the_config_does_not_explain(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    hf = tmp_path / "hf"
    shutil.copytree(exported["modern"], hf)
    tensors = load_file(hf / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(32)
    save_file(tensors, hf / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="q_proj.bias"):
        import_hf(hf, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_import_of_a_run_folder_says_what_it_is(trained_run, tmp_path):
    with pytest.raises(UserError, match="is a banglaslm run folder already: use it as it is"):
        import_hf(trained_run, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_export_refuses_unrepresentable_config(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    config["model"]["n_head"] = config["model"]["n_embd"]  # head size 1: no RoPE pairs
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    # (Such a config.json is refused as soon as the run folder is read, before export sees it.)
    with pytest.raises(UserError, match="config.json is damaged: modern arch needs an even head size"):
        export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(UserError, match="cannot export"):
        check_exportable(ModelConfig(arch="modern", n_embd=30, n_head=2, vocab_size=10))


def test_failed_export_leaves_nothing(trained_run, tmp_path, monkeypatch):
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        export_hf(trained_run, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_export_will_not_overwrite_a_folder(trained_run, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not a banglaslm HF export folder .*; choose another HF export folder$"):
        export_hf(trained_run, tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="not a banglaslm HF export folder"):  # overwrite replaces only an export
        export_hf(trained_run, tmp_path / "hf", overwrite=True)
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    export_hf(trained_run, tmp_path / "hf2")
    export_hf(trained_run, tmp_path / "hf2", overwrite=True)
    assert {p.name for p in (tmp_path / "hf2").iterdir()} == HF_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "hf2"]


def test_a_folder_without_a_tokenizer_gets_advice_that_fits_what_it_holds(exported, tmp_path):
    """The advice to rebuild tokenizer.json from vocab.json/merges.txt was given to a folder that
    had neither: its command then failed too."""
    hf = tmp_path / "hf"
    shutil.copytree(exported["modern"], hf)
    for path in hf.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")):
            path.unlink()
    with pytest.raises(UserError, match="holds no tokenizer at all: copy the tokenizer files of the model it came from"):
        import_hf(hf, tmp_path / "run")
    (hf / "vocab.json").write_text("{}", encoding="utf-8")
    (hf / "merges.txt").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match=r"save_pretrained\('.*'\) writes one from its vocab.json and merges.txt$"):
        import_hf(hf, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_chat_template_reads_content_parts_and_refuses_what_ours_refuses(exported, runs):
    """The exported template pasted a list of content parts into the prompt as its Python repr
    and rendered a "tool" message as a system turn; an empty answer was one token apart."""
    from transformers import AutoTokenizer

    from banglaslm.chat_template import content_text, encode_chat

    hf, ours = AutoTokenizer.from_pretrained(exported["modern"]), load_model(runs["modern"]).tokenizer
    parts = [{"type": "text", "text": "প্রশ্ন "}, {"type": "text", "text": "৩"}]
    conversations = [
        [{"role": "user", "content": parts}],
        [{"role": "developer", "content": [{"type": "text", "text": "ভদ্র হও।"}]}, {"role": "user", "content": "ক"}],
        [{"role": "user", "content": "ক"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "খ"}],
        [{"role": "user", "content": "ক"}, {"role": "assistant", "content": None}, {"role": "user", "content": "খ"}],
    ]
    for messages in conversations:
        plain = [{"role": "system" if m["role"] == "developer" else m["role"],
                  "content": content_text(m["content"] or "")} for m in messages]
        assert hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False) == \
            encode_chat(ours, plain)[0], messages
    for messages, why in (([{"role": "tool", "content": "৪২"}], "role must be"),
                          ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "text content")):
        with pytest.raises(Exception, match=why):
            hf.apply_chat_template(messages, tokenize=False)
