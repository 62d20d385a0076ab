"""An independent golden for npu_moe_update_expert: a plain loop over (token, k), written from the
contract in docs/op.md and the kernel's per-element code, with numpy float32
scalars for the pruning arithmetic. Slow on purpose; shares no code with the package."""

import numpy as np


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _tree_sum_float32(values):
    """The NPU vector unit's reduction as AscendC documents it (ReduceSum: a binary tree over
    adjacent pairs), zero-padded. The one assumption here that is not in the kernel source."""
    level = [np.float32(v) for v in values]
    while len(level) & (len(level) - 1):
        level.append(np.float32(0))
    while len(level) > 1:
        level = [np.float32(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def golden_update_expert(
    expert_ids,
    eplb_table,
    expert_scales=None,
    pruning_threshold=None,
    active_mask=None,
    local_rank_id=-1,
    world_size=-1,
    balance_mode=0,
):
    """Lists in, lists out: (balanced_expert_ids, balanced_active_mask) as nested Python lists."""
    ids = expert_ids.tolist()
    table = eplb_table.tolist()
    bs, k = len(ids), len(ids[0])
    balanced = [[0] * k for _ in range(bs)]
    for i in range(bs):
        for j in range(k):
            row = table[ids[i][j]]
            count = row[0]
            if count == 1:
                slot = 1
            elif balance_mode == 0:
                slot = local_rank_id // _ceil_div(world_size, count) + 1
            else:
                slot = i % count + 1
            balanced[i][j] = row[slot]

    mask = [[True] * k for _ in range(bs)]
    if expert_scales is not None:
        scales = expert_scales.float().tolist()
        threshold = pruning_threshold.reshape(-1).tolist()
        active = active_mask.tolist() if active_mask is not None else [True] * bs
        for i in range(bs):
            total = _tree_sum_float32(scales[i])
            for j in range(k):
                product = np.float32(np.float32(threshold[j]) * total)
                mask[i][j] = bool(active[i]) and bool(np.float32(scales[i][j]) >= product)
    return balanced, mask
