"""Brute-force optimal assignment: the reference the Hungarian matchers are tested against."""

from __future__ import annotations

import itertools


def brute_force_best(cost: list[list[float]]) -> float:
    """Minimum total cost over every one-to-one assignment of min(Q, K) pairs (``cost[q][k]``)."""
    num_queries, num_targets = len(cost), len(cost[0])
    if num_targets <= num_queries:
        return min(sum(cost[q][k] for k, q in enumerate(perm))
                   for perm in itertools.permutations(range(num_queries), num_targets))
    return min(sum(cost[q][k] for q, k in enumerate(perm))
               for perm in itertools.permutations(range(num_targets), num_queries))
