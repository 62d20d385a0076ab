"""The public Python wrapper, with torch_npu.npu_moe_update_expert's keyword signature."""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def npu_moe_update_expert(
    expert_ids: torch.Tensor,
    eplb_table: torch.Tensor,
    *,
    expert_scales: Optional[torch.Tensor] = None,
    pruning_threshold: Optional[torch.Tensor] = None,
    active_mask: Optional[torch.Tensor] = None,
    local_rank_id: int = -1,
    world_size: int = -1,
    balance_mode: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Map top-K logical expert ids to physical ids and prune low-weight experts.

    Returns ``(balanced_expert_ids, balanced_active_mask)``, both (BS, K); feed them to
    ``npu_moe_distribute_dispatch_v2`` as ``expert_ids`` and ``x_active_mask``. The dispatcher
    picks the kernel: the native one on an NPU, the plugin's reference kernel elsewhere; the fake
    kernel under torch.compile. See docs/op.md for the exact semantics.
    """
    return torch.ops.npu.npu_moe_update_expert.default(
        expert_ids,
        eplb_table,
        expert_scales=expert_scales,
        pruning_threshold=pruning_threshold,
        active_mask=active_mask,
        local_rank_id=local_rank_id,
        world_size=world_size,
        balance_mode=balance_mode,
    )
