"""A baseline written from DeepSeek EPLB's published description of its global policy (README and
the paper: redundant experts, then balanced packing), for the planner benchmark. Not its code.

1. Replication: each redundant slot in turn goes to the expert with the highest load per
   replica, all layers at once (one argmax over (L, E) per slot).
2. Balanced packing, layer by layer: replicas (load / count each) heaviest first, each onto the
   lightest rank that still has a free slot; every rank ends with P / R replicas.
Physical ids run rank by rank, so phy2log (L, P) converts to eplb_tables with the project's
builders. Like the original, nothing stops two replicas of one expert landing on one rank.

The packing loop reads and writes torch tensors element by element, the way a torch
implementation of that loop (the published one included) does; ``lists=True`` runs the same
loop on Python lists, which is several times faster. The benchmark reports both, so that the
planner is compared with the algorithm and not only with one way to write it.
"""

import torch


def rebalance_global(weight: torch.Tensor, num_replicas: int, num_ranks: int, *, lists: bool = False) -> torch.Tensor:
    """phy2log (L, P) int64 for loads ``weight`` (L, E); P = ``num_replicas``, a multiple of R."""
    num_layers, num_experts = weight.shape
    weight = weight.double()
    rows = torch.arange(num_layers)
    replica_expert = torch.arange(num_experts).repeat(num_layers, 1)
    counts = torch.ones(num_layers, num_experts, dtype=torch.int64)
    extra = []
    for _ in range(num_replicas - num_experts):
        chosen = (weight / counts).argmax(-1)
        extra.append(chosen)
        counts[rows, chosen] += 1
    if extra:
        replica_expert = torch.cat([replica_expert, torch.stack(extra, 1)], 1)
    sizes = weight.gather(1, replica_expert) / counts.gather(1, replica_expert)

    per_rank = num_replicas // num_ranks
    phy2log = torch.empty(num_layers, num_replicas, dtype=torch.int64)
    for layer in range(num_layers):
        loads = [0.0] * num_ranks
        filled = [0] * num_ranks
        experts, layer_sizes = replica_expert[layer], sizes[layer]
        order = layer_sizes.argsort(descending=True, stable=True)
        if lists:
            experts, layer_sizes, order = experts.tolist(), layer_sizes.tolist(), order.tolist()
        for item in order:
            rank = min((r for r in range(num_ranks) if filled[r] < per_rank), key=loads.__getitem__)
            phy2log[layer, rank * per_rank + filled[rank]] = experts[item]
            loads[rank] += layer_sizes[item]
            filled[rank] += 1
    return phy2log
