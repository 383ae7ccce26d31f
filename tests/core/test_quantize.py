"""quantize.py: int8 rows with a scale, bf16, the model surgery, and the refusals."""

import copy

import pytest
import torch

from banglaslm.config import build_config
from banglaslm.errors import UserError
from banglaslm.model import GPT
from banglaslm.quantize import (
    QuantEmbedding,
    QuantLinear,
    check_quantize,
    quantize_model,
    quantize_rows,
)


def test_int8_rows_round_to_the_nearest_step_of_their_own_scale():
    torch.manual_seed(0)
    w = torch.randn(64, 100) * torch.logspace(-3, 2, 64)[:, None]  # rows of very different sizes
    w[5] = 0.0
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (64,)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 * (1 + 1e-5)).all())  # half a step, in each row's own step
    assert bool((q.abs().amax(dim=1)[torch.arange(64) != 5] == 127).all())  # each row uses the whole range
    assert bool((q[5] == 0).all()) and scale[5] == 1.0  # an all-zero row stays zero, with no 0/0
    assert torch.equal(quantize_rows(-w)[0], -q)  # symmetric


@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_quant_linear_is_a_linear_with_the_stored_weights(kind):
    torch.manual_seed(1)
    linear = torch.nn.Linear(48, 20)
    quant = QuantLinear(linear.weight, linear.bias, kind)
    stored = (quant.qweight.float() * quant.scale[:, None]) if kind == "int8" else quant.qweight.float()
    x = torch.randn(3, 5, 48)
    assert torch.allclose(quant(x), torch.nn.functional.linear(x, stored, linear.bias), atol=1e-5)
    assert (stored - linear.weight).abs().max() < 0.01 * linear.weight.abs().max()  # and close to the original


@pytest.mark.parametrize("arch, tie", [("gpt", "auto"), ("modern", "auto"), ("modern", "false"), ("gpt", "true")])
@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_quantize_model_replaces_every_matrix_and_keeps_a_tied_head_one_matrix(arch, tie, kind):
    cfg = build_config(overrides={"arch": arch, "n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 32,
                                  "dropout": 0.0, "vocab_size": 300, "tie_embeddings": tie})
    torch.manual_seed(2)
    model = GPT(cfg.model).eval()
    before = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    idx = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        want = model(idx)[0]
        quantized = quantize_model(copy.deepcopy(model), kind)
        got = quantized(idx)[0]
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) for m in quantized.modules()
                   if m is not quantized.pos_emb)
    assert isinstance(quantized.tok_emb, QuantEmbedding) and isinstance(quantized.lm_head, QuantLinear)
    assert (quantized.tok_emb.qweight is quantized.lm_head.qweight) == cfg.model.tied_head
    after = sum(t.numel() * t.element_size() for t in list(quantized.parameters()) + list(quantized.buffers()))
    assert after < before * (0.31 if kind == "int8" else 0.55)  # the float32 matrices were released
    assert (got - want).abs().max() < 0.02 * want.abs().max()
    assert quantize_model(model, "none") is model


def test_kinds_and_devices_are_checked_before_anything_loads():
    with pytest.raises(UserError, match="must be one of none, int8, bf16, got 'int4'"):
        check_quantize("int4", torch.device("cpu"))
    with pytest.raises(UserError, match="on a GPU use `quantize` none"):
        check_quantize("int8", torch.device("cuda"))
    check_quantize("none", torch.device("cuda"))
