"""Encoder activation checkpointing: the same outputs and gradients as without it, by recomputing the
encoder layers (custom MSDA autograd Function included) in the backward pass, and only when training."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import DeformableDETR, build_model
from detr_ssl.models.msda import resolve_backend
from detr_ssl.models.msda.pytorch_backend import _SparseMSDA

TINY = replace(model_preset("tiny"), hidden_dim=32, num_heads=2, ffn_dim=32, num_queries=8, backbone="resnet10t",
               dropout=0.0, msda_backend="pytorch")


def _pair(**overrides: object) -> tuple[DeformableDETR, DeformableDETR]:
    """The same weights built without and with encoder checkpointing."""
    models = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        models.append(build_model(replace(TINY, encoder_checkpointing=checkpointing, **overrides), num_classes=3))
    return models[0], models[1]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 48, generator=generator)
    mask = torch.zeros(2, 64, 48, dtype=torch.bool)
    mask[1, :, 30:] = True
    return images, mask


def _loss_and_grads(model: DeformableDETR) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs and parameter gradients of one training forward/backward (dropout drawn from seed 2)."""
    images, mask = _batch()
    torch.manual_seed(2)
    out = model.train()(images, mask)
    # Every output of every decoder layer, weighted so that no gradient is a plain sum of ones.
    loss = sum((o.logits.sigmoid() ** 2).sum() + (o.boxes ** 2).sum() for o in [out, *out.aux])
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return {"logits": out.logits, "boxes": out.boxes, "hidden": out.hidden_states}, grads


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no_dropout", "dropout"])
def test_same_outputs_and_gradients_with_and_without_checkpointing(dropout: float) -> None:
    # With dropout the recomputation must replay the forward's masks (checkpoint restores the RNG state).
    plain, checkpointed = _pair(dropout=dropout)
    outputs, grads = _loss_and_grads(plain)
    outputs_ckpt, grads_ckpt = _loss_and_grads(checkpointed)
    for name, value in outputs.items():
        torch.testing.assert_close(outputs_ckpt[name], value, rtol=1e-6, atol=1e-6, msg=name)
    assert grads_ckpt.keys() == grads.keys()
    encoder_grads = [name for name in grads if name.startswith("encoder.")]
    assert any("self_attn.sampling_offsets" in name for name in encoder_grads)  # through the MSDA Function
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def _count_msda_forwards(model: DeformableDETR, train: bool, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many times the custom MSDA Function's forward runs in one forward (+ backward when training)."""
    calls = []
    original = _SparseMSDA.forward

    def counting(*args: object) -> torch.Tensor:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(_SparseMSDA, "forward", staticmethod(counting))
    images, mask = _batch()
    if train:
        model.train()(images, mask).logits.sum().backward()
    else:
        with torch.no_grad():
            model.eval()(images, mask)
    monkeypatch.undo()
    return len(calls)


def test_encoder_layers_are_recomputed_only_when_training(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend(TINY.msda_backend, torch.device("cpu")) == "pytorch"  # the custom Function runs
    plain, checkpointed = _pair()
    layers = TINY.enc_layers + TINY.dec_layers
    assert _count_msda_forwards(plain, True, monkeypatch) == layers
    # Every encoder layer's MSDA runs again in the backward pass; the decoder's do not.
    assert _count_msda_forwards(checkpointed, True, monkeypatch) == layers + TINY.enc_layers
    assert _count_msda_forwards(checkpointed, False, monkeypatch) == layers
