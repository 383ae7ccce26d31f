"""The one tensor-name table: read one way it exports, read the other way it imports, and its
names are the ones transformers' own classes use."""

import pytest
import torch

from banglaslm.config import ModelConfig
from banglaslm.errors import UserError
from banglaslm.interop.hf_names import from_hf, tensor_map, to_hf
from banglaslm.model import GPT


def small(arch: str, tie: bool | None = None) -> ModelConfig:
    return ModelConfig(arch=arch, n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=50, tie_embeddings=tie)


@pytest.mark.parametrize("tie", [None, True, False])
@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_the_table_reads_both_ways(arch, tie):
    cfg = small(arch, tie)
    torch.manual_seed(0)
    state = GPT(cfg).state_dict()
    tensors = to_hf(state, cfg)
    assert ("lm_head.weight" in tensors) is not cfg.tied_head  # a tied matrix is stored once
    back = from_hf(tensors, cfg)
    expected = {k for k in state if not (cfg.tied_head and k == "lm_head.weight")}
    assert set(back) == expected
    assert all(torch.equal(back[k], state[k]) for k in expected)


@pytest.mark.parametrize("tie", [None, True, False])
@pytest.mark.parametrize("arch, hf_class, config_class", [("gpt", "GPT2LMHeadModel", "GPT2Config"),
                                                         ("modern", "LlamaForCausalLM", "LlamaConfig")])
def test_names_are_transformers_own(arch, hf_class, config_class, tie):
    transformers = pytest.importorskip("transformers")
    from banglaslm.interop.hf_export import hf_config

    cfg = small(arch, tie)
    config = getattr(transformers, config_class)(**{k: v for k, v in hf_config(cfg, 0).items() if k != "banglaslm"})
    model = getattr(transformers, hf_class)(config)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) is cfg.tied_head
    theirs = set(model.state_dict())
    ours = {name for _, names, _ in tensor_map(cfg) for name in names}
    ignored = {k for k in theirs if k.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))}
    assert ours == theirs - ignored - ({"lm_head.weight"} if cfg.tied_head else set())


def test_a_missing_or_unknown_tensor_is_refused():
    cfg = small("modern")
    tensors = to_hf(GPT(cfg).state_dict(), cfg)
    with pytest.raises(UserError, match="no tensor model.norm.weight"):
        from_hf({k: v for k, v in tensors.items() if k != "model.norm.weight"}, cfg)
    with pytest.raises(UserError, match="no place for"):
        from_hf({**tensors, "model.layers.0.self_attn.q_proj.bias": torch.zeros(16)}, cfg)
