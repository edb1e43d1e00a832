"""Region pooling: masked means and one-box RoIAlign in view pixel coordinates."""

from __future__ import annotations

import torch

from detr_ssl.blocks.pooling import MASK_EPS, masked_average_pool, roi_align_pool


def test_masked_average_pool_is_the_mean_under_a_binary_mask() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 5, generator=generator)
    masks = (torch.rand(2, 2, 4, 5, generator=generator) > 0.5).float()
    pooled = masked_average_pool(features, masks)
    assert pooled.shape == (2, 2, 3)
    for b in range(2):
        for n in range(2):
            selected = features[b][:, masks[b, n].bool()]  # (C, pixels under the mask)
            torch.testing.assert_close(pooled[b, n], selected.mean(dim=1))


def test_masked_average_pool_weights_soft_masks_and_zeroes_empty_ones() -> None:
    features = torch.tensor([[[[2.0, 4.0], [6.0, 8.0]]]])  # (1, 1, 2, 2)
    masks = torch.tensor([[[[0.75, 0.25], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    pooled = masked_average_pool(features, masks)
    torch.testing.assert_close(pooled, torch.tensor([[[0.75 * 2 + 0.25 * 4], [0.0]]]))
    assert MASK_EPS > 0


def _ramp(height: int, width: int) -> torch.Tensor:
    """(1, 2, H, W) features: channel 0 is the column index, channel 1 ten times the row index."""
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                                indexing="ij")
    return torch.stack((cols, 10 * rows)).unsqueeze(0)


def test_roi_align_samples_a_ramp_at_the_bin_centres() -> None:
    # View 32 x 32, features 8 x 8 (stride 4). Box (8, 4, 24, 20) px = (2, 1, 6, 5) cells; aligned=True shifts
    # by half a cell to (1.5, 0.5, 5.5, 4.5); 2 x 2 bins of 2 cells: centres x = 2.5, 4.5 and y = 1.5, 3.5.
    boxes = torch.tensor([[8.0, 4.0, 24.0, 20.0]])
    expected = torch.tensor([[[[2.5, 4.5], [2.5, 4.5]], [[15.0, 15.0], [35.0, 35.0]]]])
    for ratio in (-1, 1, 2):  # bilinear samples of a linear ramp average to its value at the bin centre
        pooled = roi_align_pool(_ramp(8, 8), boxes, 2, (32, 32), sampling_ratio=ratio)
        torch.testing.assert_close(pooled, expected)


def test_roi_align_scales_each_axis_and_picks_each_image() -> None:
    # View 16 high x 32 wide, features 4 x 8: both strides 4 here, but given per axis.
    features = torch.cat((_ramp(4, 8), _ramp(4, 8) + 100))
    boxes = torch.tensor([[0.0, 0.0, 32.0, 16.0], [8.0, 4.0, 16.0, 12.0]])
    pooled = roi_align_pool(features, boxes, (1, 1), (16, 32))
    # Whole map: centre (3.5, 1.5). Second box (2, 1, 4, 3) cells, shifted: centre (2.5, 1.5), plus 100.
    torch.testing.assert_close(pooled.flatten(1), torch.tensor([[3.5, 15.0], [102.5, 115.0]]))


def test_roi_align_of_the_whole_view_at_feature_size_reproduces_the_features() -> None:
    features = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[0.0, 0.0, 56.0, 40.0]] * 2)
    pooled = roi_align_pool(features, boxes, (5, 7), (40, 56))
    torch.testing.assert_close(pooled, features)
