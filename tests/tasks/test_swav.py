"""SwAV specifics: prototype normalisation and freezing, the queue, and Sinkhorn across processes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from detr_ssl.models.config import model_preset
from detr_ssl.datasets.multicrop import Views
from detr_ssl.losses.swav import sinkhorn_knopp
from detr_ssl.tasks.backbone_pretext import MultiCropConfig
from detr_ssl.tasks.swav import SwavConfig, SwavTask


def _task(**swav: object) -> SwavTask:
    cfg = replace(SwavTask.preset_config("demo"), model=model_preset("tiny"),
                  crops=MultiCropConfig(global_size=32, local_size=16, num_global=2, num_local=1),
                  swav=SwavConfig(num_prototypes=6, feature_dim=8, hidden_dim=16, **swav))
    return SwavTask(cfg)


def _views(batch: int = 4, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    return Views([torch.randn(batch, 3, 32, 32, generator=g), torch.randn(batch, 3, 32, 32, generator=g),
                  torch.randn(batch, 3, 16, 16, generator=g)])


def test_prototypes_are_renormalised_and_frozen_for_the_first_batches() -> None:
    torch.manual_seed(0)
    task = _task(freeze_prototypes_steps=2)
    model = task.build_model()
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    grads = []
    for step in range(3):
        loss = task.compute_loss(model, _views(seed=step))
        torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(6))
        model.zero_grad()
        loss.total.backward()
        grads.append(model.prototypes.weight.grad.abs().sum().item())
        assert model.trunk.conv1.weight.grad.abs().sum() > 0
    assert grads[0] == 0 and grads[1] == 0 and grads[2] > 0, grads
    assert int(model.batches_seen) == 3


def test_the_queue_fills_then_joins_the_sinkhorn_batch() -> None:
    torch.manual_seed(0)
    task = _task(queue_length=8, freeze_prototypes_steps=0)
    model = task.build_model()
    for step in range(2):
        task.compute_loss(model, _views(seed=step))
    assert int(model.queue_filled) == 8
    embeddings, scores = model(_views(seed=5).crops, freeze_prototypes=False)
    stored = model.queue[0].clone()
    with torch.no_grad():
        with_queue = task._codes(model, 0, embeddings[0], scores[0])
    # With the queue the plan spreads 12 samples over the prototypes, not just these 4.
    plan = sinkhorn_knopp(torch.cat((stored @ model.prototypes.weight.T, scores[0].detach())), 0.05, 3)[-4:]
    torch.testing.assert_close(with_queue, plan / plan.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.queue[0][:4], embeddings[0].detach())  # newest first
    torch.testing.assert_close(model.queue[0][4:], stored[:4])


def test_embeddings_are_unit_vectors_per_view() -> None:
    model = _task().build_model().eval()
    embeddings, scores = model(_views().crops, freeze_prototypes=False)
    assert [tuple(e.shape) for e in embeddings] == [(4, 8)] * 3 and [tuple(s.shape) for s in scores] == [(4, 6)] * 3
    for embedding in embeddings:
        torch.testing.assert_close(embedding.norm(dim=1), torch.ones(4))


def _sinkhorn_worker(rank: int, scores: torch.Tensor, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        half = scores.shape[0] // 2
        torch.save(sinkhorn_knopp(scores[rank * half:(rank + 1) * half], 0.05, 3), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_sinkhorn_across_two_processes_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    scores = F.normalize(torch.randn(10, 7, generator=torch.Generator().manual_seed(3)), dim=1)
    # Shift one process's rows: a per-process max shift would then give a different plan.
    scores[5:] += 0.3
    out = str(tmp_path / "plan")
    mp.spawn(_sinkhorn_worker, args=(scores, str(tmp_path / "store"), out), nprocs=2, join=True)
    joined = torch.cat([torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)])
    torch.testing.assert_close(joined, sinkhorn_knopp(scores, 0.05, 3))
