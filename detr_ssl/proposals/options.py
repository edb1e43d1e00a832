"""The dataset of the tasks trained on selective-search pseudo-boxes (DetReg, Pair DETR), built from their
proposal options (`ProposalConfig`, defined torch-free in ``detr_ssl/tasks/options/proposals.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from detr_ssl.datasets import ImageFolderDataset
from detr_ssl.errors import ConfigError
from detr_ssl.proposals.cache import ProposalCache
from detr_ssl.proposals.dataset import ProposalDataset
from detr_ssl.proposals.provider import ProposalProvider
from detr_ssl.proposals.selective_search import ProposalSettings
from detr_ssl.tasks.options.proposals import ProposalConfig


def proposal_dataset(options: ProposalConfig, output_dir: Path, images: ImageFolderDataset,
                     transforms: Callable | None, crop_size: int | None = None) -> ProposalDataset:
    """Unlabeled images whose targets are their cached selective-search proposals (class 0); default cache:
    OUTPUT/proposals. With ``--proposal-draws N``, selective search seeds 0 .. N - 1, each its own cache
    entry. Images with fewer than 2 proposals are replaced by random others, as released."""
    if options.proposal_draws < 1:
        raise ConfigError(f"--proposal-draws must be at least 1, got {options.proposal_draws}")
    root = options.proposal_cache or Path(output_dir) / "proposals"
    providers = []
    for draw in range(options.proposal_draws):
        settings = ProposalSettings(resize=options.proposal_resize, top_k=options.proposal_top_k, seed=draw)
        providers.append(ProposalProvider(settings, ProposalCache(root, settings), require_cache=options.require_cache))
    return ProposalDataset(images, providers, transforms, crop_size=crop_size, min_boxes=2)
