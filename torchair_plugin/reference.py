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
Values that would read out of bounds on the NPU (expert ids, replica counts of the experts in
use) raise ValueError naming the culprit instead of returning garbage. On CPU the gathers' own
bounds checks detect them for free (an invalid count is mapped to an out-of-range index), and the
precise diagnosis runs only then; on other devices an out-of-range gather is a fatal device
assert, so the values are checked first (one host sync).
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from torchair_plugin.checks import check_update_expert_args
from torchair_plugin.schema import OP_NAME


# Integer division is not vectorised on CPU (~20 ns an element): both modes look the replica up
# in small tables computed once per shape instead. They are cached per device and read-only.
# A count of 0 maps to _INVALID, far below any valid flat index, so the table gather rejects it.
_INVALID = -(2**30)


@functools.lru_cache(maxsize=64)
def _mode0_lookup(
    num_experts: int, f: int, world_size: int, local_rank_id: int, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(e * F for every expert, slot by count): slot[c] = rank // ceil(ws / c) + 1, c in [0, F)."""
    row_starts = torch.arange(0, num_experts * f, f, dtype=torch.int32, device=device)
    slot_by_count = [_INVALID] + [local_rank_id // -(-world_size // c) + 1 for c in range(1, f)]
    return row_starts, torch.tensor(slot_by_count, dtype=torch.int32, device=device)


@functools.lru_cache(maxsize=16)
def _mode1_lookup(bs: int, k: int, f: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(row i of every flat element, (BS*K,); i % c + 1 stored at c * BS + i for c in [0, F))."""
    rows = torch.arange(bs, dtype=torch.int32)
    counts = torch.arange(f, dtype=torch.int32).clamp_(min=1).view(f, 1)
    slot = rows % counts + 1
    slot[0] = _INVALID
    return rows.repeat_interleave(k).to(device), slot.view(-1).to(device)


def _map_to_physical(table, flat_ids, counts, bs, k, f, local_rank_id, world_size, balance_mode):
    """balanced_expert_ids as a flat int32 tensor; IndexError if a value is out of range."""
    num_experts = counts.size(0)
    if balance_mode == 0:
        # One replica per expert for the whole rank: choose it per expert, then gather per token.
        row_starts, slot_by_count = _mode0_lookup(num_experts, f, world_size, local_rank_id, table.device)
        chosen = row_starts + slot_by_count.index_select(0, counts)
        return table.index_select(0, chosen).index_select(0, flat_ids)
    rows, slot_by_count_and_row = _mode1_lookup(bs, k, f, table.device)
    slot = slot_by_count_and_row.index_select(0, torch.add(rows, counts.index_select(0, flat_ids), alpha=bs))
    return table.index_select(0, torch.add(slot, flat_ids, alpha=f))  # e * F + (i % count + 1)


def _check_values(flat_ids: torch.Tensor, counts: torch.Tensor, f: int) -> None:
    """ValueError for an expert id out of range, or a used expert whose count is not in [1, F-1]."""
    num_experts = counts.size(0)
    bad_ids = ((flat_ids < 0) | (flat_ids >= num_experts)).nonzero()
    if bad_ids.numel():
        at = bad_ids[0].item()
        raise ValueError(
            f"{OP_NAME}: expert_ids values must be in [0, moe_expert_num={num_experts}), "
            f"got {flat_ids[at].item()} at flat index {at}"
        )
    used = torch.zeros_like(counts, dtype=torch.bool)
    used[flat_ids.long()] = True
    bad_rows = (used & ((counts < 1) | (counts > f - 1))).nonzero()
    if bad_rows.numel():
        row = bad_rows[0].item()
        raise ValueError(
            f"{OP_NAME}: eplb_table[{row}, 0] (replica count of logical expert {row}) must be "
            f"in [1, F-1={f - 1}], got {counts[row].item()}"
        )


def _pairwise_token_sums(scales: torch.Tensor) -> torch.Tensor:
    """Per-token float32 sums, (BS,), as a binary tree over adjacent pairs, zero-padded.

    Works on the transposed view so that every tree level is one add of two row blocks.
    """
    columns = scales.t()
    width = columns.size(0)
    padded = 1 << (width - 1).bit_length()
    if padded != width:
        columns = torch.nn.functional.pad(columns, (0, 0, 0, padded - width))
    while columns.size(0) > 1:
        columns = columns[0::2] + columns[1::2]
    return columns.reshape(-1)


def _pruned_mask(expert_scales, pruning_threshold, active_mask) -> torch.Tensor:
    scales = expert_scales.to(torch.float32)
    sums = _pairwise_token_sums(scales)
    if active_mask is not None:
        # An inactive token keeps no expert: a NaN product compares False for every s[j]. This
        # costs one op on (BS,) instead of an AND over (BS, K).
        sums = torch.where(active_mask, sums, float("nan"))
    return scales >= pruning_threshold.reshape(1, -1) * sums.view(-1, 1)


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
    f = eplb_table.size(1)
    table = eplb_table.contiguous().view(-1)
    flat_ids = expert_ids.reshape(-1)
    counts = eplb_table.select(1, 0)
    mapping = (table, flat_ids, counts, bs, k, f, local_rank_id, world_size, balance_mode)
    if table.device.type == "cpu":
        try:
            balanced = _map_to_physical(*mapping)
        except IndexError:
            _check_values(flat_ids, counts, f)
            # Only experts nobody routes to have bad counts: harmless, as on the NPU.
            balanced = _map_to_physical(*mapping[:2], counts.clamp(1, f - 1), *mapping[3:])
    else:
        _check_values(flat_ids, counts, f)
        balanced = _map_to_physical(*mapping[:2], counts.clamp(1, f - 1), *mapping[3:])
    balanced = balanced.view(bs, k).to(expert_ids.dtype)

    if expert_scales is None:
        mask = torch.ones((bs, k), dtype=torch.bool, device=expert_ids.device)
    else:
        mask = _pruned_mask(expert_scales, pruning_threshold, active_mask)
    return balanced, mask
