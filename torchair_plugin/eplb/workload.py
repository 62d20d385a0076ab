"""Synthetic skewed routing, and the per-expert load a planner takes from routing."""

from __future__ import annotations

import numpy as np
import torch

from torchair_plugin.eplb._arrays import int_array, positive_int


def skewed_routing(
    num_experts: int, world_size: int, tokens_per_rank: int, top_k: int, skew: float, seed: int = 0
) -> torch.Tensor:
    """Routing (world_size, tokens_per_rank, top_k) int64: each token picks top_k distinct experts
    with probability proportional to 1 / rank**skew, the popularity ranks shuffled over expert
    ids (seeded) so that hot experts are not all neighbours in the id space."""
    num_experts, world_size = positive_int("num_experts", num_experts), positive_int("world_size", world_size)
    tokens_per_rank, top_k = positive_int("tokens_per_rank", tokens_per_rank), positive_int("top_k", top_k)
    if top_k > num_experts:
        raise ValueError(f"top_k must be <= num_experts={num_experts}, got {top_k}")
    if not np.isfinite(skew) or skew < 0:
        raise ValueError(f"skew must be a finite number >= 0, got {skew!r}")
    generator = torch.Generator().manual_seed(seed)
    popularity = torch.arange(1, num_experts + 1, dtype=torch.float64) ** -float(skew)
    weights = popularity[torch.randperm(num_experts, generator=generator)]
    picks = torch.multinomial(weights.expand(world_size * tokens_per_rank, -1), top_k, generator=generator)
    return picks.view(world_size, tokens_per_rank, top_k)


def expert_load(routing, num_experts: int, *, per_source: bool = False) -> np.ndarray:
    """Tokens per logical expert (E,), or per (source rank, expert) with ``per_source``, from
    routing (world_size, tokens, top_k)."""
    ids = int_array("routing", routing, (3,))
    if ids.size and (ids.min() < 0 or ids.max() >= num_experts):
        raise ValueError(f"routing ids must be in [0, num_experts={num_experts}), got range [{ids.min()}, {ids.max()}]")
    per_rank = np.stack([np.bincount(rank.ravel(), minlength=num_experts) for rank in ids]).astype(np.float64)
    return per_rank if per_source else per_rank.sum(0)
