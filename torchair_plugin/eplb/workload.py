"""Synthetic skewed routing, and the per-expert load a planner takes from routing."""

from __future__ import annotations

import numpy as np
import torch

from torchair_plugin import limits
from torchair_plugin.eplb._arrays import check_expert_ids, expert_count, int_array, positive_int
from torchair_plugin.validate import check_int

MAX_SKEW = 100.0
"""Above it the popularity of expert 1024 (1024**-skew) underflows to 0 in float64, and the
sampler could no longer find top_k distinct experts."""
MAX_ROUTING_IDS = 2**28
"""world_size * tokens_per_rank * top_k of a generated routing: 2 GiB of int64 ids."""
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64 bits


def skewed_routing(
    num_experts: int, world_size: int, tokens_per_rank: int, top_k: int, skew: float, seed: int = 0
) -> torch.Tensor:
    """Routing (world_size, tokens_per_rank, top_k) int64: each token picks top_k distinct experts
    with probability proportional to 1 / rank**skew, the popularity ranks shuffled over expert
    ids (seeded) so that hot experts are not all neighbours in the id space.

    Bounds: the op's (num_experts <= 1024, world_size <= 768, top_k <= min(16, num_experts)),
    skew in [0, 100], seed in [0, 2**64), and at most 2**28 ids in all.
    """
    num_experts = expert_count("num_experts", num_experts)
    world_size = positive_int("world_size", world_size, limits.MAX_WORLD_SIZE)
    top_k = positive_int("top_k", top_k, min(limits.MAX_K, num_experts))
    tokens_per_rank = positive_int("tokens_per_rank", tokens_per_rank, MAX_ROUTING_IDS // (world_size * top_k))
    seed = check_int("seed", seed, 0, MAX_SEED)
    if (
        isinstance(skew, bool)
        or not isinstance(skew, (int, float, np.integer, np.floating))
        or not 0 <= skew <= MAX_SKEW
    ):
        raise ValueError(f"skew must be a number in [0, {MAX_SKEW:g}], got {skew!r}")
    generator = torch.Generator().manual_seed(seed)
    popularity = torch.arange(1, num_experts + 1, dtype=torch.float64) ** -float(skew)
    weights = popularity[torch.randperm(num_experts, generator=generator)]
    picks = torch.multinomial(weights.expand(world_size * tokens_per_rank, -1), top_k, generator=generator)
    return picks.view(world_size, tokens_per_rank, top_k)


def expert_load(routing, num_experts: int, *, per_source: bool = False) -> np.ndarray:
    """Tokens per logical expert (E,), or per (source rank, expert) with ``per_source``, from
    routing (world_size, tokens, top_k). ``num_experts`` <= 1024, the op's limit."""
    num_experts = expert_count("num_experts", num_experts)
    ids = int_array("routing", routing, (3,))
    check_expert_ids("routing", ids, num_experts, f" (num_experts={num_experts})")
    per_rank = np.stack([np.bincount(rank.ravel(), minlength=num_experts) for rank in ids]).astype(np.float64)
    return per_rank if per_source else per_rank.sum(0)
