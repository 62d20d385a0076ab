"""The common greedy EPLB placement, the baseline the planner must never lose to.

Replica counts: each spare slot to the expert with the highest load per replica (load / count,
whatever the op's mode). Packing: replicas heaviest first onto the least-loaded rank with a free
slot. Physical ids rank by rank, so the table comes from phy2log (replicas in ascending id).
"""

import numpy as np

from torchair_plugin.eplb import table_from_phy2log


def greedy_table(load, num_ranks, slots_per_rank):
    load = np.asarray(load, dtype=np.float64)
    counts = np.ones(load.shape[0], dtype=np.int64)
    for _ in range(num_ranks * slots_per_rank - load.shape[0]):
        per_replica = np.where(counts < num_ranks, load / counts, -1.0)
        counts[int(per_replica.argmax())] += 1
    experts = np.repeat(np.arange(load.shape[0]), counts)
    sizes = load[experts] / counts[experts]
    rank_load = np.zeros(num_ranks)
    slots = [[] for _ in range(num_ranks)]
    for item in np.argsort(-sizes, kind="stable"):
        open_ranks = [r for r in range(num_ranks) if len(slots[r]) < slots_per_rank]
        r = min(open_ranks, key=lambda r: rank_load[r])
        slots[r].append(int(experts[item]))
        rank_load[r] += sizes[item]
    phy2log = np.array([e for rank in slots for e in rank])
    return table_from_phy2log(phy2log, num_ranks, num_logical=load.shape[0])
