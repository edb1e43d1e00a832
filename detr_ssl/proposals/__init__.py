"""Unsupervised box proposals (selective search), their on-disk cache, and datasets that serve them."""

from detr_ssl.proposals.cache import ProposalCache, ProposalCacheWarning, image_digest
from detr_ssl.proposals.dataset import ProposalDataset
from detr_ssl.proposals.precompute import PrecomputeSummary, precompute
from detr_ssl.proposals.provider import ProposalProvider
from detr_ssl.proposals.selective_search import ProposalSettings, selective_search_boxes

__all__ = [
    "PrecomputeSummary",
    "ProposalCache",
    "ProposalCacheWarning",
    "ProposalDataset",
    "ProposalProvider",
    "ProposalSettings",
    "image_digest",
    "precompute",
    "selective_search_boxes",
]
