import pytest
import torch

from banglaslm.config import build_config
from banglaslm.model import GPT, apply_rope, rope_tables


def make(arch, **kw):
    cfg = build_config(overrides={"arch": arch, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16,
                                  "dropout": 0.0, "vocab_size": 50, **kw})
    torch.manual_seed(0)
    return GPT(cfg.model)


def test_course_preset_has_58m_parameters_with_banglat5_vocab():
    cfg = build_config("course-58m", overrides={"vocab_size": 32100})
    n = GPT(cfg.model).num_params()
    assert 57.5e6 < n < 58.5e6


@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_causality_future_tokens_do_not_change_past_logits(arch):
    model = make(arch).eval()
    x = torch.randint(0, 50, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 50
    la, _ = model(x)
    lb, _ = model(y)
    assert torch.allclose(la[0, :8], lb[0, :8], atol=1e-6)
    assert not torch.allclose(la[0, 8:], lb[0, 8:])


def test_variant_switches():
    gpt, modern = make("gpt"), make("modern")
    assert gpt.pos_emb is not None and modern.pos_emb is None
    assert modern.lm_head.weight is modern.tok_emb.weight and gpt.lm_head.weight is not gpt.tok_emb.weight
    assert isinstance(gpt.norm_f, torch.nn.LayerNorm) and isinstance(modern.norm_f, torch.nn.RMSNorm)
    assert all(m.bias is None for m in modern.modules() if isinstance(m, torch.nn.Linear))
    assert gpt.blocks[0].attn.qkv.bias is not None


@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_tie_embeddings_ties_or_unties_either_arch(arch):
    default = make(arch)
    assert (default.lm_head.weight is default.tok_emb.weight) is (arch == "modern")
    for tie in (True, False):
        model = make(arch, tie_embeddings=str(tie).lower())
        assert (model.lm_head.weight is model.tok_emb.weight) is tie
        # an untied head is a matrix of its own: vocab x width more parameters
        assert model.num_params() - default.num_params() == (50 * 32) * ((not tie) - (arch == "gpt"))
        x, y = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))
        model(x, y)[1].backward()
        assert model.lm_head.weight.grad is not None and model.tok_emb.weight.grad is not None


def test_rope_is_relative():
    # Rotating q and k by their positions makes q·k depend only on the distance between them.
    cos, sin = rope_tables(32, 8, 10000.0)
    q, k = torch.randn(8), torch.randn(8)
    def score(i, j):
        qi = apply_rope(q.view(1, 1, 1, 8), cos[i:i + 1], sin[i:i + 1]).flatten()
        kj = apply_rope(k.view(1, 1, 1, 8), cos[j:j + 1], sin[j:j + 1]).flatten()
        return float(qi @ kj)
    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_loss_starts_near_uniform_and_block_limit(arch):
    model = make(arch)
    x, y = torch.randint(0, 50, (4, 16)), torch.randint(0, 50, (4, 16))
    _, loss = model(x, y)
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.5
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
