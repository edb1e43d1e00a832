"""Momentum encoders: BYOL's cosine schedule, the frozen copy, and the EMA update of parameters and buffers."""

from __future__ import annotations

import math

import torch
from torch import nn

from detr_ssl.blocks.momentum import cosine_momentum, ema_update_, momentum_copy


def test_cosine_momentum_runs_from_base_to_one() -> None:
    assert cosine_momentum(0.99, 0, 100) == 0.99
    assert cosine_momentum(0.99, 100, 100) == 1.0
    assert math.isclose(cosine_momentum(0.99, 50, 100), 0.995)
    assert math.isclose(cosine_momentum(0.9, 25, 100), 1 - 0.1 * (math.sqrt(0.5) + 1) / 2)


def test_cosine_momentum_holds_at_one_past_the_schedule() -> None:
    assert cosine_momentum(0.99, 101, 100) == 1.0 and cosine_momentum(0.5, 9, 4) == 1.0


def test_cosine_momentum_without_a_schedule_is_the_base() -> None:
    assert cosine_momentum(0.996, 7, 0) == 0.996 and cosine_momentum(0.996, 7, -1) == 0.996


def _network() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_momentum_copy_is_a_frozen_equal_copy() -> None:
    online = _network()
    target = momentum_copy(online)
    assert all(p.requires_grad for p in online.parameters())
    assert not any(p.requires_grad for p in target.parameters())
    for a, b in zip(online.state_dict().values(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_ema_update_moves_parameters_and_copies_buffers() -> None:
    torch.manual_seed(0)
    online, target = _network(), momentum_copy(_network())
    online.train()(torch.randn(8, 3))  # running statistics of the online network move
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ema_update_(target, online, 0.9)
    for name, value in target.named_parameters():
        expected = 0.9 * before[name] + 0.1 * dict(online.named_parameters())[name].detach()
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
        assert not value.requires_grad and value.grad is None
    for name, value in target.named_buffers():
        assert torch.equal(value, dict(online.named_buffers())[name])
    assert not torch.equal(target[1].running_mean, before["1.running_mean"])


def test_ema_update_is_bitwise_the_written_formula() -> None:
    torch.manual_seed(1)
    online, target = nn.Linear(5, 5), nn.Linear(5, 5)
    expected = 0.99 * target.weight.detach() + (1 - 0.99) * online.weight.detach()
    ema_update_(target, online, 0.99)
    assert torch.equal(target.weight.detach(), expected)


def test_ema_update_can_keep_the_target_buffers() -> None:
    torch.manual_seed(2)
    online, target = _network(), momentum_copy(_network())
    online.train()(torch.randn(8, 3))
    buffers = {k: v.clone() for k, v in target.named_buffers()}
    ema_update_(target, online, 0.5, copy_buffers=False)
    for name, value in target.named_buffers():
        assert torch.equal(value, buffers[name])


def test_ema_update_records_no_graph() -> None:
    online, target = nn.Linear(2, 2), nn.Linear(2, 2)
    ema_update_(target, online, 0.5)
    assert all(p.grad_fn is None for p in target.parameters())
    assert online.weight.grad is None
