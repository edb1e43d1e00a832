"""Fine-tuning schedules for label fractions: DetReg's published epochs and how other fractions scale.

Tiny labelled sets need many epochs (DetReg fine-tunes 1% of COCO for 2000 epochs). A fraction without a
published point is anchored at the closest published fraction on a log scale and given epochs inversely
proportional to its number of labelled images, so it gets about as many optimizer steps as the anchor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from detr_ssl.errors import ConfigError

__all__ = ["PUBLISHED_EPOCHS", "fraction_epochs", "labelled_images", "lr_drop_epoch"]

#: DetReg's fine-tuning epochs per label fraction of COCO train (PROTOCOLS.md).
PUBLISHED_EPOCHS: dict[float, int] = {0.01: 2000, 0.02: 1000, 0.05: 500, 0.10: 400}


def labelled_images(num_images: int, fraction: float) -> int:
    """Images in a fold: ``round(N * fraction)``, at least 1 (the rule of `select_image_ids`)."""
    return min(num_images, max(1, round(num_images * fraction)))


def fraction_epochs(fraction: float, num_images: int, schedule: Mapping[float, int] = PUBLISHED_EPOCHS) -> int:
    """Fine-tuning epochs for ``fraction`` of ``num_images`` training images.

    A schedule point is used as is. Any other fraction is anchored at the closest point on a log scale
    (3% -> 2%, 50% -> 10%) and gets the anchor's epochs times (anchor's labelled images / its labelled
    images): the number of optimizer steps stays that of the anchor.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"label fraction must be in (0, 1] (e.g. 0.01 for 1%), got {fraction!r}")
    if not schedule:
        raise ConfigError("the epoch schedule is empty")
    for point, epochs in schedule.items():
        if math.isclose(point, fraction, rel_tol=1e-9):
            return epochs
    anchor = min(schedule, key=lambda point: abs(math.log(point / fraction)))
    ratio = labelled_images(num_images, anchor) / labelled_images(num_images, fraction)
    return max(1, round(schedule[anchor] * ratio))


def lr_drop_epoch(epochs: int, drop_at: float) -> int:
    """The epoch at which the learning rate drops: ``drop_at`` of the way through, at least epoch 1."""
    if not 0.0 < drop_at <= 1.0:
        raise ConfigError(f"--lr-drop-at must be in (0, 1], got {drop_at}")
    return max(1, round(epochs * drop_at))
