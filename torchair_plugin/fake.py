"""The fake (meta) kernel: output shapes and dtypes, after every check the NPU applies."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from torchair_plugin import schema
from torchair_plugin.checks import check_arguments


def npu_moe_update_expert_fake(
    expert_ids: torch.Tensor,
    eplb_table: torch.Tensor,
    expert_scales: Optional[torch.Tensor] = None,
    pruning_threshold: Optional[torch.Tensor] = None,
    active_mask: Optional[torch.Tensor] = None,
    local_rank_id: int = -1,
    world_size: int = -1,
    balance_mode: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(balanced_expert_ids (BS, K) of expert_ids' dtype, balanced_active_mask (BS, K) bool)."""
    check_arguments(schema.arguments(locals()))
    balanced_expert_ids = expert_ids.new_empty(expert_ids.shape)
    balanced_active_mask = expert_ids.new_empty(expert_ids.shape, dtype=torch.bool)
    return balanced_expert_ids, balanced_active_mask
