"""k-NN probe: votes, ties, and object crops taken from the right boxes."""

from __future__ import annotations

import torch

from detr_ssl.datasets import CocoDetection, make_eval_transforms
from detr_ssl.evaluation.knn import knn_accuracy, object_crop_embeddings


def test_knn_labels_clustered_points_and_fails_on_shuffled_labels() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 5
    labels = torch.arange(4).repeat_interleave(20)
    points = centers[labels] + torch.randn(80, 16, generator=g)
    assert knn_accuracy(points[::2], labels[::2], points[1::2], labels[1::2], k=5) == 1.0
    shuffled = labels[::2][torch.randperm(40, generator=g)]
    assert knn_accuracy(points[::2], shuffled, points[1::2], labels[1::2], k=5) < 0.6


def test_knn_majority_vote_and_nearest_neighbour_tie_break() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_accuracy(bank, torch.tensor([0, 1, 1, 0]), query, torch.tensor([1]), k=3) == 1.0  # 2 votes beat 1
    assert knn_accuracy(bank, torch.tensor([0, 1, 2, 2]), query, torch.tensor([0]), k=2) == 1.0  # tie -> nearest


def test_object_crops_follow_the_annotated_boxes(demo_data, demo_subset) -> None:
    dataset = CocoDetection(demo_subset(4), demo_data.image_dir, make_eval_transforms(128, 213))
    mean_colour = lambda crops: crops.mean(dim=(-2, -1))  # noqa: E731  (N, 3, S, S) -> (N, 3)
    features, labels = object_crop_embeddings(mean_colour, dataset, crop_size=16, context=0.0)
    expected = sum(len(dataset[i][1]["boxes"]) for i in range(len(dataset)))
    assert features.shape == (expected, 3) and labels.shape == (expected,)
    # A crop of an object is not the image's average colour: the boxes really select the objects.
    image, target = dataset[0]
    assert not torch.allclose(features[0], image.mean(dim=(-2, -1)), atol=1e-2)
