"""The MLP builder: layer layouts, state-dict names and RNG use identical to the hand-written heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detr_ssl.blocks.heads import mlp


def _assert_same(built: nn.Module, written: nn.Module) -> None:
    assert [type(m) for m in built] == [type(m) for m in written]
    built_state, written_state = built.state_dict(), written.state_dict()
    assert list(built_state) == list(written_state)
    for name, value in built_state.items():
        assert torch.equal(value, written_state[name]), name


def test_plain_two_layers_match_densecl_global_head() -> None:
    torch.manual_seed(0)
    built = mlp(16, 32, 8)
    torch.manual_seed(0)
    written = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Linear(32, 8))
    _assert_same(built, written)
    assert {"0.weight", "0.bias", "2.weight", "2.bias"} == set(built.state_dict())
    torch.manual_seed(0)
    assert not torch.equal(mlp(16, 32, 8)[0].weight, nn.Linear(16, 32).weight)  # seeding is what makes it equal


def test_conv_two_layers_match_densecl_dense_head() -> None:
    torch.manual_seed(1)
    built = mlp(16, 32, 8, conv=True)
    torch.manual_seed(1)
    written = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(inplace=True), nn.Conv2d(32, 8, 1))
    _assert_same(built, written)
    features = torch.randn(2, 16, 3, 5)
    torch.testing.assert_close(built(features), written(features))


def test_batch_norm_layout_matches_swav_projection_head() -> None:
    torch.manual_seed(2)
    built = mlp(16, 32, 8, norm="bn")
    torch.manual_seed(2)
    written = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(inplace=True), nn.Linear(32, 8))
    _assert_same(built, written)
    assert "1.running_mean" in built.state_dict() and "3.weight" in built.state_dict()


def test_three_layers_with_final_norm_is_simsiam_shaped() -> None:
    torch.manual_seed(3)
    built = mlp(6, 10, 4, num_layers=3, norm="bn", final_norm=True, bias=False)
    torch.manual_seed(3)
    written = nn.Sequential(nn.Linear(6, 10, bias=False), nn.BatchNorm1d(10), nn.ReLU(inplace=True),
                            nn.Linear(10, 10, bias=False), nn.BatchNorm1d(10), nn.ReLU(inplace=True),
                            nn.Linear(10, 4, bias=False), nn.BatchNorm1d(4, affine=False))
    _assert_same(built, written)
    assert built[-1].weight is None and all(layer.bias is None for layer in built[0:7:3])


def test_conv_batch_norm_is_two_dimensional_and_one_layer_is_one_linear() -> None:
    conv = mlp(4, 6, 2, norm="bn", final_norm=True, conv=True)
    assert [type(m) for m in conv] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
    assert conv(torch.randn(3, 4, 2, 2)).shape == (3, 2, 2, 2)
    single = mlp(4, 999, 2, num_layers=1)
    assert len(single) == 1 and single[0].weight.shape == (2, 4)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        mlp(4, 4, 4, num_layers=0)
    with pytest.raises(ValueError, match="norm"):
        mlp(4, 4, 4, norm="ln")  # type: ignore[arg-type]


def test_activation_replaces_relu_after_every_hidden_layer_only() -> None:
    head = mlp(4, 8, 2, num_layers=3, norm="bn", activation=nn.GELU)
    assert [type(layer) for layer in head] == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Linear, nn.BatchNorm1d,
                                                nn.GELU, nn.Linear]
