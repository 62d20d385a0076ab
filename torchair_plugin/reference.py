"""Reference kernel for CPU and CUDA (and an NPU without the native kernel), bit-exact with the NPU.

Vectorised torch, no loop over tokens. It is written for few, cheap ops because it runs in
model code on every MoE layer: int32 index arithmetic, one flattened gather per output, the
per-expert replica choice of balance_mode 0 computed once per expert rather than per element.

Semantics are the kernel's (see docs/op.md and shared/docs/op-semantics.md):
- balance_mode 0: replica ``local_rank_id // ceil(world_size / count) + 1`` of each expert;
- balance_mode 1: replica ``i % count + 1`` where i is the token ROW;
- pruning in float32: ``s[j] >= threshold[j] * sum(s)`` (equality keeps), the sum taken as the
  NPU's vector unit takes it, a binary tree over adjacent pairs (AscendC ReduceSum), and an
  inactive token (active_mask False) has every expert pruned;
- without pruning inputs the mask is all True (the NPU leaves it unwritten).
Before reading the table it checks the values that would read out of bounds on the NPU
(expert ids, replica counts), so bad data raises ValueError instead of returning garbage.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from torchair_plugin.checks import check_update_expert_args
from torchair_plugin.schema import OP_NAME


@functools.lru_cache(maxsize=64)
def _replica_base(num_experts: int, f: int, device: torch.device) -> torch.Tensor:
    """Flat offset of each expert's first replica, ``e * F + 1``, reused across calls."""
    return torch.arange(1, num_experts * f, f, dtype=torch.int32, device=device)


@functools.lru_cache(maxsize=64)
def _token_rows(bs: int, device: torch.device) -> torch.Tensor:
    return torch.arange(bs, dtype=torch.int32, device=device).view(bs, 1)


def _check_expert_ids(flat_ids: torch.Tensor, num_experts: int) -> None:
    low, high = (v.item() for v in torch.aminmax(flat_ids))
    if low < 0 or high >= num_experts:
        bad = ((flat_ids < 0) | (flat_ids >= num_experts)).nonzero()[0].item()
        raise ValueError(
            f"{OP_NAME}: expert_ids values must be in [0, moe_expert_num={num_experts}), "
            f"got {flat_ids[bad].item()} at flat index {bad}"
        )


def _check_counts(counts: torch.Tensor, flat_ids: torch.Tensor, f: int) -> None:
    """Replica counts of the experts in use must be in [1, F-1] (row = count + count ids)."""
    low, high = (v.item() for v in torch.aminmax(counts))
    if low >= 1 and high <= f - 1:
        return
    # Rare path: only a referenced expert with a bad count would read out of bounds.
    used = torch.zeros_like(counts, dtype=torch.bool)
    used[flat_ids.long()] = True
    bad_rows = (used & ((counts < 1) | (counts > f - 1))).nonzero()
    if bad_rows.numel():
        row = bad_rows[0].item()
        raise ValueError(
            f"{OP_NAME}: eplb_table[{row}, 0] (replica count of logical expert {row}) must be "
            f"in [1, F-1={f - 1}], got {counts[row].item()}"
        )


def _pairwise_row_sum(values: torch.Tensor) -> torch.Tensor:
    """Row sums as a binary tree over adjacent pairs, zero-padded to a power of two."""
    width = values.size(1)
    padded = 1 << (width - 1).bit_length()
    if padded != width:
        values = torch.nn.functional.pad(values, (0, padded - width))
    while values.size(1) > 1:
        values = values[:, 0::2] + values[:, 1::2]
    return values


def _pruned_mask(expert_scales, pruning_threshold, active_mask) -> torch.Tensor:
    scales = expert_scales.to(torch.float32)
    products = pruning_threshold.reshape(1, -1) * _pairwise_row_sum(scales)
    keep = scales >= products
    if active_mask is not None:
        keep &= active_mask.view(-1, 1)
    return keep


def npu_moe_update_expert_reference(
    expert_ids: torch.Tensor,
    eplb_table: torch.Tensor,
    expert_scales: Optional[torch.Tensor] = None,
    pruning_threshold: Optional[torch.Tensor] = None,
    active_mask: Optional[torch.Tensor] = None,
    local_rank_id: int = -1,
    world_size: int = -1,
    balance_mode: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    check_update_expert_args(
        expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask,
        local_rank_id, world_size, balance_mode,
    )
    bs, k = expert_ids.shape
    num_experts, f = eplb_table.shape
    table = eplb_table.contiguous().view(-1)
    flat_ids = expert_ids.reshape(-1)
    counts = eplb_table[:, 0]
    _check_expert_ids(flat_ids, num_experts)
    _check_counts(counts, flat_ids, f)

    if balance_mode == 0:
        # One replica per expert for the whole rank: choose it per expert, then gather per token.
        ceil_ranks_per_replica = torch.div(counts + (world_size - 1), counts, rounding_mode="floor")
        chosen = _replica_base(num_experts, f, table.device) + local_rank_id // ceil_ranks_per_replica
        balanced = table.index_select(0, chosen).index_select(0, flat_ids)
    else:
        token_counts = counts.index_select(0, flat_ids).view(bs, k)
        replica = torch.remainder(_token_rows(bs, table.device), token_counts)
        # e * F + 1 + (i % count), the "+ 1" carried by starting the flat table at offset 1.
        flat_index = torch.add(replica, flat_ids.view(bs, k), alpha=f).view(-1)
        balanced = table[1:].index_select(0, flat_index)
    balanced = balanced.view(bs, k).to(expert_ids.dtype)

    if expert_scales is None:
        mask = torch.ones((bs, k), dtype=torch.bool, device=expert_ids.device)
    else:
        mask = _pruned_mask(expert_scales, pruning_threshold, active_mask)
    return balanced, mask
