"""Reference kernel for CPU and CUDA (and an NPU without the native kernel), bit-exact with the NPU.

Vectorised torch, no loop over tokens. It is written for few, cheap ops because it runs in
model code on every MoE layer: int32 index arithmetic, one flattened gather per output, the
per-expert replica choice of balance_mode 0 computed once per expert rather than per element.

Semantics are the kernel's (see docs/op.md and shared/docs/op-semantics.md):
- balance_mode 0: replica ``local_rank_id // ceil(world_size / count) + 1`` of each expert;
- balance_mode 1: replica ``i % count + 1`` where i is the token ROW;
- pruning in float32: ``s[j] >= threshold[j] * sum(s)`` (equality keeps), the sum taken as
  AscendC documents its vector reductions, a binary tree over adjacent pairs (an assumption: not
  checked on hardware; see docs/op.md), and an inactive token (active_mask False) has every
  expert pruned;
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

from torchair_plugin import limits
from torchair_plugin.checks import check_update_expert_args
from torchair_plugin.schema import OP_NAME


# Integer division is not vectorised on CPU (~20 ns an element): both modes look the replica up
# in small tables computed once per shape instead. They are cached per device and read-only.
# A count of 0 maps to _INVALID, far below any valid flat index, so the table gather rejects it.
_INVALID = -(2**30)


@functools.lru_cache(maxsize=64)
def _mode0_slot_by_count(f: int, world_size: int, local_rank_id: int, device: torch.device) -> torch.Tensor:
    """slot[c] = rank // ceil(world_size / c) + 1 for c in [0, F), int64 for gather."""
    slots = [_INVALID] + [local_rank_id // -(-world_size // c) + 1 for c in range(1, f)]
    return torch.tensor(slots, dtype=torch.int64, device=device)


@functools.lru_cache(maxsize=16)
def _mode1_slot_by_count_and_row(f: int, device: torch.device) -> torch.Tensor:
    """i % c + 1 stored at c * MAX_BS + i, for counts c in [0, F) and rows i in [0, MAX_BS).

    One table per F serves every batch size (serving varies BS call by call)."""
    rows = torch.arange(limits.MAX_BS, dtype=torch.int32)
    counts = torch.arange(f, dtype=torch.int32).clamp_(min=1).view(f, 1)
    slot = rows % counts + 1
    slot[0] = _INVALID
    return slot.view(-1).to(device)


@functools.lru_cache(maxsize=16)
def _flat_token_rows(k: int, device: torch.device) -> torch.Tensor:
    """The token row of every flat (i, j) element of the largest batch; a batch uses a prefix.

    int64, so that ``row + count * MAX_BS`` cannot wrap around for any int32 count: a huge count
    must land out of the table's range (and raise), never back inside it."""
    return torch.arange(limits.MAX_BS, dtype=torch.int64, device=device).repeat_interleave(k)


# The checks depend on metadata only (shapes, dtypes, devices, attrs): an eager call whose
# signature already passed them skips them. Building the key costs a quarter of the checks.
_PASSED_SIGNATURES: set = set()
_MAX_SIGNATURES = 1024


def _metadata(tensor: Optional[torch.Tensor]):
    return None if tensor is None else (tensor.shape, tensor.dtype, tensor.device)


def _check_args(*args) -> None:
    """check_update_expert_args, remembered per signature for the eager hot path."""
    tensors, attrs = args[:5], args[5:]
    signature = (*map(_metadata, tensors), *attrs)
    if signature in _PASSED_SIGNATURES:
        return
    check_update_expert_args(*args)
    if len(_PASSED_SIGNATURES) < _MAX_SIGNATURES:
        _PASSED_SIGNATURES.add(signature)


def _map_to_physical(eplb_table, flat_ids, counts, bs, k, local_rank_id, world_size, balance_mode):
    """balanced_expert_ids, flat int32. Out-of-range values raise IndexError/RuntimeError on CPU."""
    f = eplb_table.size(1)
    if balance_mode == 0:
        # One replica per expert for the whole rank: choose it per expert, then gather per token.
        slot = _mode0_slot_by_count(f, world_size, local_rank_id, eplb_table.device).index_select(0, counts)
        return eplb_table.gather(1, slot.view(-1, 1)).view(-1).index_select(0, flat_ids)
    rows = _flat_token_rows(k, eplb_table.device).narrow(0, 0, bs * k)
    lookup = torch.add(rows, counts.index_select(0, flat_ids), alpha=limits.MAX_BS)
    slot = _mode1_slot_by_count_and_row(f, eplb_table.device).index_select(0, lookup)
    flat_table = eplb_table.contiguous().view(-1)
    return flat_table.index_select(0, torch.add(slot, flat_ids, alpha=f))  # e * F + (i % count + 1)


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


def _map_after_diagnosis(eplb_table, flat_ids, counts, *rest):
    """The careful path: ValueError for a value the NPU would read out of bounds with; otherwise
    the mapping, with the counts of experts nobody routes to made harmless (as on the NPU, they
    are never read)."""
    f = eplb_table.size(1)
    _check_values(flat_ids, counts, f)
    safe_table = eplb_table.clone()
    safe_table[:, 0].clamp_(1, f - 1)
    return _map_to_physical(safe_table, flat_ids, safe_table[:, 0], *rest)


def _pairwise_token_sums(expert_scales: torch.Tensor) -> torch.Tensor:
    """Per-token float32 sums, (BS,), as a binary tree over adjacent pairs, zero-padded.

    One add per tree level, its operands the even and odd columns from a single ``unbind``
    (Python-level slicing costs as much as the add itself at these sizes).
    """
    bs, k = expert_scales.shape
    sums = expert_scales.to(torch.float32)
    padded = 1 << (k - 1).bit_length()
    if padded != k:
        sums = torch.nn.functional.pad(sums, (0, padded - k))
    while sums.size(1) > 1:
        sums = torch.add(*sums.view(bs, -1, 2).unbind(2))
    return sums.view(bs)


def _pruned_mask(expert_scales, pruning_threshold, active_mask) -> torch.Tensor:
    sums = _pairwise_token_sums(expert_scales)
    if active_mask is not None:
        # An inactive token keeps no expert: a NaN product compares False for every s[j]. This
        # costs one op on (BS,) instead of an AND over (BS, K).
        sums = torch.where(active_mask, sums, float("nan"))
    products = torch.outer(sums, pruning_threshold.reshape(-1))  # [i, j] = sum_i * threshold_j
    # fp16/bf16 scales are promoted to float32 exactly by the comparison itself.
    return expert_scales >= products


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
    _check_args(
        expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask,
        local_rank_id, world_size, balance_mode,
    )
    bs, k = expert_ids.shape
    f = eplb_table.size(1)
    flat_ids = expert_ids.reshape(-1)
    counts = eplb_table.select(1, 0)
    mapping = (flat_ids, counts, bs, k, local_rank_id, world_size, balance_mode)
    if eplb_table.device.type == "cpu":
        try:
            balanced = _map_to_physical(eplb_table, *mapping)
        except (IndexError, RuntimeError):
            balanced = _map_after_diagnosis(eplb_table, *mapping)
    else:
        # Off the CPU an out-of-range gather is a fatal device-side assert: check values first.
        balanced = _map_after_diagnosis(eplb_table, *mapping)
    balanced = balanced.view(bs, k)
    if balanced.dtype != expert_ids.dtype:
        balanced = balanced.to(expert_ids.dtype)

    if expert_scales is None:
        mask = torch.ones((bs, k), dtype=torch.bool, device=expert_ids.device)
    else:
        mask = _pruned_mask(expert_scales, pruning_threshold, active_mask)
    return balanced, mask
