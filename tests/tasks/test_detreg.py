"""DetReg as released: teacher crops from the un-augmented image, embedding targets follow the matching,
the embedding loss on the last decoder layer only (by default), a frozen backbone, real weights required
by the paper preset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.config import LossConfig, with_backbone_init
from detr_ssl.datasets import ImageFolderDataset
from detr_ssl.datasets.collate import collate_detection
from detr_ssl.datasets.transforms import Compose, RandomHorizontalFlip, RandomSizeCrop, ToTensor
from detr_ssl.engine.optim import build_optimizer
from detr_ssl.errors import ConfigError
from detr_ssl.losses import build_criterion
from detr_ssl.models.outputs import DetectionOutput
from detr_ssl.proposals import ProposalDataset, ProposalProvider, ProposalSettings
from detr_ssl.tasks import get_task
from detr_ssl.tasks.detreg import DetRegTask, detreg_loss

#: Four solid quadrants of a 64 x 96 image (H x W); a box on one quadrant crops to its colour alone.
QUADRANTS = {(0, 0): (255, 0, 0), (0, 48): (0, 255, 0), (32, 0): (0, 0, 255), (32, 48): (255, 255, 0)}
QUADRANT_BOXES = np.array([[4, 4, 40, 28], [52, 4, 92, 28], [4, 36, 40, 60], [52, 36, 92, 60]], np.float32)


class _FixedProvider(ProposalProvider):
    """The given boxes for every image (no selective search)."""

    def __init__(self, boxes: np.ndarray, seed: int = 0) -> None:
        super().__init__(ProposalSettings(seed=seed))
        self._boxes = boxes

    def boxes(self, image_path, image=None) -> np.ndarray:
        return self._boxes


@pytest.fixture
def quadrant_images(tmp_path: Path) -> ImageFolderDataset:
    pixels = np.zeros((64, 96, 3), np.uint8)
    for (top, left), colour in QUADRANTS.items():
        pixels[top:top + 32, left:left + 48] = colour
    folder = tmp_path / "quadrants"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(pixels).save(folder / name)
    return ImageFolderDataset(folder)


def _crop_colours(crops: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(int(c) for c in crop.float().mean(dim=(1, 2)).round()) for crop in crops]


def test_crops_are_the_boxes_pixels_before_augmentation(quadrant_images: ImageFolderDataset) -> None:
    flipped = ProposalDataset(quadrant_images, _FixedProvider(QUADRANT_BOXES),
                              Compose([RandomHorizontalFlip(p=1.0), ToTensor()]), crop_size=16)
    image, target = flipped[0]
    assert target["crops"].shape == (4, 3, 16, 16) and target["crops"].dtype == torch.uint8
    # Each crop is one solid colour: the quadrant its box covers in the image as loaded, not the flipped one.
    assert _crop_colours(target["crops"]) == list(QUADRANTS.values())
    assert (target["crops"].float().std(dim=(2, 3)) == 0).all()
    # ... while the box itself follows the flip: box 0 now lies on the right half, over green pixels' mirror.
    assert float(target["boxes"][0, 0]) > 0.5


def test_a_crop_that_removes_boxes_removes_their_crops(quadrant_images: ImageFolderDataset) -> None:
    torch.manual_seed(3)
    dataset = ProposalDataset(quadrant_images, _FixedProvider(QUADRANT_BOXES),
                              Compose([RandomSizeCrop(20, 40), ToTensor()]), crop_size=8)
    seen_partial = False
    for _ in range(20):
        image, target = dataset[0]
        assert len(target["crops"]) == len(target["boxes"]) >= 1
        # Each surviving box still lies on its quadrant: the pixel at its centre has its crop's colour.
        height, width = image.shape[-2:]
        for box, colour in zip(target["boxes"], _crop_colours(target["crops"])):
            x, y = int(box[0] * width), int(box[1] * height)
            assert tuple(int(c) for c in (image[:, y, x] * 255).round()) == colour
        seen_partial |= len(target["boxes"]) < 4
    assert seen_partial, "no crop ever removed a box: the test checked nothing"


def test_images_with_fewer_than_two_proposals_are_replaced(quadrant_images: ImageFolderDataset) -> None:
    class OneBoxForTheFirstImage(_FixedProvider):
        def boxes(self, image_path, image=None) -> np.ndarray:
            return self._boxes[:1] if Path(image_path).name == "a.png" else self._boxes

    dataset = ProposalDataset(quadrant_images, OneBoxForTheFirstImage(QUADRANT_BOXES), ToTensor(), min_boxes=2)
    for _ in range(5):
        _, target = dataset[0]
        assert int(target["image_id"]) == 1 and len(target["boxes"]) == 4


def test_several_draws_are_each_used(quadrant_images: ImageFolderDataset) -> None:
    providers = [_FixedProvider(QUADRANT_BOXES[:2], seed=0), _FixedProvider(QUADRANT_BOXES[2:], seed=1)]
    dataset = ProposalDataset(quadrant_images, providers, ToTensor())
    torch.manual_seed(0)
    first_boxes = {round(float(dataset[0][1]["boxes"][0, 1]), 3) for _ in range(20)}
    assert len(first_boxes) == 2


def _matched_setup(num_layers: int = 3, queries: int = 6, dim: int = 5):
    """Random detections of ``num_layers`` decoder layers for 2 images, targets, their embeddings."""
    gen = torch.Generator().manual_seed(0)
    layers = [DetectionOutput(logits=torch.randn(2, queries, 1, generator=gen),
                              boxes=torch.rand(2, queries, 4, generator=gen) * 0.5 + 0.25) for _ in range(num_layers)]
    output = replace(layers[-1], aux=layers[:-1])
    targets = [{"boxes": torch.rand(k, 4, generator=gen) * 0.5 + 0.25, "labels": torch.zeros(k, dtype=torch.int64)}
               for k in (3, 2)]
    embeddings = [torch.randn(3, dim, generator=gen), torch.randn(2, dim, generator=gen)]
    return output, targets, embeddings, torch.randn(num_layers, 2, queries, dim, generator=gen)


def test_each_query_regresses_the_embedding_of_the_proposal_it_matched() -> None:
    output, targets, embeddings, predicted = _matched_setup()
    criterion = build_criterion(1, LossConfig())
    indices = criterion(output, targets).indices
    for image, (queries, matched) in enumerate(indices):
        predicted[-1, image, queries] = embeddings[image][matched]
    loss = detreg_loss(criterion, output, predicted, targets, embeddings)
    assert float(loss.terms["loss_embedding"]) == 0.0
    # Handing every query the embedding of another proposal is penalised, by the mean |difference|.
    for image, (queries, matched) in enumerate(indices):
        predicted[-1, image, queries] = embeddings[image][matched.roll(1)]
    shifted = detreg_loss(criterion, output, predicted, targets, embeddings)
    wanted = torch.cat([(embeddings[i][m.roll(1)] - embeddings[i][m]).abs() for i, (_, m) in enumerate(indices)])
    torch.testing.assert_close(shifted.terms["loss_embedding"], wanted.mean())


@pytest.mark.parametrize(("layers", "expected_terms"), [("last", 1), ("all", 3)])
def test_embedding_loss_layers(layers: str, expected_terms: int) -> None:
    output, targets, embeddings, predicted = _matched_setup()
    predicted.requires_grad_(True)
    criterion = build_criterion(1, LossConfig())
    loss = detreg_loss(criterion, output, predicted, targets, embeddings, embedding_layers=layers)
    terms = sorted(name for name in loss.terms if name.startswith("loss_embedding"))
    assert len(terms) == expected_terms
    embedding_part = sum(loss.terms[name] for name in terms)
    loss.total.backward()
    grad_per_layer = predicted.grad.abs().sum(dim=(1, 2, 3))
    assert grad_per_layer[-1] > 0
    assert bool((grad_per_layer[:-1] > 0).all()) == (layers == "all")
    assert float(embedding_part) > 0


def _demo_task(tmp_path: Path, *flags: str) -> DetRegTask:
    cfg = parse_pretrain_args(["--task", "detreg", "--output-dir", str(tmp_path), *flags])
    return DetRegTask(DetRegTask.configure(replace(cfg, model=with_backbone_init(cfg.model, cfg.backbone_init))))


def test_backbone_stays_bit_identical_with_a_nonzero_backbone_lr(tmp_path: Path, demo_photos: Path) -> None:
    task = _demo_task(tmp_path, "--lr-backbone", "1e-3", "--lr", "1e-3", "--data", str(demo_photos),
                      "--preset", "demo", "--train-scales", "64", "--max-size", "64", "--crop-size", "32")
    model = task.build_model()
    dataset = task.build_dataset(ImageFolderDataset(demo_photos), ToTensor())
    optimizer = build_optimizer(model, task.config.optim)
    backbone = {k: v.clone() for k, v in model.detector.backbone.state_dict().items()}
    heads = {k: v.clone() for k, v in model.embedding_head.state_dict().items()}
    model.train()
    for step in range(2):
        batch = collate_detection([dataset[2 * step], dataset[2 * step + 1]])
        optimizer.zero_grad()
        task.compute_loss(model, batch).total.backward()
        optimizer.step()
    assert all(torch.equal(v, backbone[k]) for k, v in model.detector.backbone.state_dict().items())
    assert any(not torch.equal(v, heads[k]) for k, v in model.embedding_head.state_dict().items())


def test_released_defaults() -> None:
    defaults = parse_pretrain_args(["--task", "detreg"]).detreg
    assert (defaults.teacher_stage, defaults.embedding_layers, defaults.teacher_augment) == ("layer2", "last", True)
    paper = parse_pretrain_args(["--task", "detreg", "--data", "x", "--teacher-checkpoint", "t.pth"])
    assert (paper.optim.batch_size, paper.optim.epochs, paper.optim.lr_drop, paper.optim.lr) == (24, 50, 40, 2e-4)
    assert paper.data.train_scales == (320, 336, 352, 368, 400, 416, 432, 448, 464, 480)
    assert (paper.data.max_size, paper.data.crop) == (600, (384, 600))
    assert not paper.model.train_backbone and paper.optim.lr_backbone == 0


@pytest.mark.parametrize(("flags", "missing"), [
    ([], "--teacher-checkpoint and --backbone-init"),
    (["--teacher-checkpoint", "swav.pth"], "--backbone-init"),
    (["--backbone-init", "swav.pth"], "--teacher-checkpoint"),
])
def test_paper_preset_refuses_to_train_against_random_weights(flags: list[str], missing: str) -> None:
    cfg = parse_pretrain_args(["--task", "detreg", "--data", "photos", *flags])
    cfg = replace(cfg, model=with_backbone_init(cfg.model, cfg.backbone_init))
    with pytest.raises(ConfigError, match=f"give {missing} "):
        get_task("detreg").configure(cfg)
    demo = parse_pretrain_args(["--task", "detreg"])
    assert get_task("detreg").configure(demo) == demo


def test_the_released_91_logit_head_is_an_option(tmp_path: Path, demo_photos: Path) -> None:
    """--num-classes 91: the released head, pseudo-boxes labelled 1 (their matched logit is pushed up)."""
    task = _demo_task(tmp_path, "--num-classes", "91", "--data", str(demo_photos), "--preset", "demo",
                      "--train-scales", "64", "--max-size", "64", "--crop-size", "32")
    model = task.build_model()
    dataset = task.build_dataset(ImageFolderDataset(demo_photos), ToTensor())
    batch = collate_detection([dataset[0], dataset[1]])
    output, predicted = model(batch.images, batch.mask)
    assert output.logits.shape[-1] == 91
    logits = output.logits.detach().requires_grad_(True)
    loss = detreg_loss(task.criterion, replace(output, logits=logits, aux=[]), predicted[-1:].detach(),
                       [{**t, "labels": torch.ones_like(t["labels"])} for t in batch.targets],
                       task.teacher_embeddings(batch))
    loss.total.backward()
    matched = torch.cat([q for q, _ in loss.indices])
    batch_index = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(loss.indices)])
    assert (logits.grad[batch_index, matched, 1] < 0).all()  # descending the loss raises class 1
    assert torch.isfinite(task.compute_loss(model, batch).total)
