"""The proposal options of the tasks trained on selective-search pseudo-boxes (DetReg, Pair DETR, CCOP), and
OpenCV's selective-search strategies.

Torch- and OpenCV-free, so that ``--help`` answers fast; the dataset they build is
``detr_ssl/proposals/options.py``, the search ``detr_ssl/proposals/selective_search.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: OpenCV's selective-search strategy sets.
ProposalMode = Literal["fast", "quality"]


@dataclass(frozen=True)
class ProposalConfig:
    """Selective-search pseudo-boxes: how many, from which cache."""

    proposal_cache: Path | None = None
    """Proposal cache folder (scripts/precompute_proposals.py); default: OUTPUT/proposals."""
    require_cache: bool = False
    """Fail instead of computing proposals missing from the cache."""
    proposal_resize: int = 128
    proposal_top_k: int = 30
    proposal_draws: int = 1
    """Different seeded top-k draws of selective search per image, each cached; every load picks one at
    random. The released code reruns selective search at each load (a new draw every epoch); 1 keeps one
    fixed draw per image."""
