"""The CPU dropout: its keep rate, scaling, gradient, determinism, and where it steps aside for nn.Dropout."""

from __future__ import annotations

import pytest
import torch

from detr_ssl.models.dropout import Dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_each_element_is_dropped_with_probability_p(p: float) -> None:
    torch.manual_seed(0)
    keep = keep_mask((1 << 20, 4), p)
    # every quarter of the 64-bit draws (the fourth holds the draw's always-zero sign bit) drops at rate p
    rates = 1.0 - keep.float().mean(dim=0)
    assert torch.allclose(rates, torch.full((4,), p), atol=3e-3), rates
    assert keep.shape == (1 << 20, 4) and keep.dtype == torch.bool


def test_kept_elements_are_scaled_and_the_gradient_follows_the_same_mask() -> None:
    torch.manual_seed(1)
    dropout = Dropout(0.25).train()
    x = torch.randn(3, 50, 40, requires_grad=True)
    out = dropout(x)
    kept = out != 0
    assert 0.7 < kept.float().mean() < 0.8
    torch.testing.assert_close(out[kept], x.detach()[kept] / 0.75)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(kept, grad / 0.75, 0.0))


def test_the_same_seed_draws_the_same_mask() -> None:
    dropout, x = Dropout(0.1).train(), torch.randn(1000)
    torch.manual_seed(3)
    first = dropout(x)
    torch.manual_seed(3)
    assert torch.equal(dropout(x), first)
    assert not torch.equal(dropout(x), first)  # and the generator moved on


def test_inference_and_p_zero_leave_the_input_alone() -> None:
    x = torch.randn(100)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert Dropout(0.3).state_dict() == {}
