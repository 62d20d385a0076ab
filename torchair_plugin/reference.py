"""The reference kernel: the op's contract in vectorised plain torch, for every device.

It is registered as the op's kernel wherever torch_npu has no native one (CPU, CUDA, an NPU
without the kernel), so the same model code runs and is tested off the NPU. It is a
specification that runs: no loop over tokens or experts, nothing cached between calls, nothing
compiled. Bit-exact with the NPU kernel (see docs/op.md):

- balance_mode 0: replica ``local_rank_id // ceil(world_size / count) + 1`` of each expert;
- balance_mode 1: replica ``i % count + 1`` where i is the token ROW;
- pruning in float32 whatever torch's default dtype: ``s[j] >= threshold[j] * sum(s)``
  (equality keeps), the sum taken as AscendC documents its vector reductions, a binary tree over
  adjacent pairs padded with zeros to a power of two (an assumption: not checked on hardware; the
  NPU acceptance kit checks it), and an inactive token (active_mask False) has every expert
  pruned;
- without pruning inputs the mask is all True (the NPU leaves it unwritten).

Values the NPU would read out of bounds with (an expert id outside the table, a replica count
outside [1, F-1] of an expert some token uses) raise ValueError naming the culprit instead of
returning garbage. They are checked before any gather: off the CPU an out-of-range gather is a
fatal device assert, not an exception. That check is one host sync, which a test and debugging
kernel can afford.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from torchair_plugin import schema
from torchair_plugin.checks import check_arguments
from torchair_plugin.schema import OP_NAME


def _first(condition: torch.Tensor) -> int:
    """The flat index of the first True element of ``condition``."""
    return int(condition.reshape(-1).nonzero()[0].item())


def _check_values(flat_ids: torch.Tensor, counts: torch.Tensor, f: int) -> bool:
    """ValueError for an expert id outside the table, or a used expert whose count is not in
    [1, F-1]. The counts of experts no token routes to are never read (as on the NPU).

    Returns whether every expert's count (used or not) is in [1, F-1], so that the mapping can
    skip clamping the counts no token reads."""
    num_experts = counts.size(0)
    ids_low, ids_high = torch.aminmax(flat_ids)
    if ids_low.item() < 0 or ids_high.item() >= num_experts:
        at = _first((flat_ids < 0) | (flat_ids >= num_experts))
        raise ValueError(
            f"{OP_NAME}: expert_ids values must be in [0, moe_expert_num={num_experts}), "
            f"got {flat_ids[at].item()} at flat index {at}"
        )
    counts_low, counts_high = torch.aminmax(counts)
    if counts_low.item() >= 1 and counts_high.item() <= f - 1:
        return True  # every count is valid: no need to find which experts are used
    used_counts = counts.index_select(0, flat_ids)
    bad = (used_counts < 1) | (used_counts > f - 1)
    if bad.any().item():
        row = int(flat_ids[_first(bad)].item())
        raise ValueError(
            f"{OP_NAME}: eplb_table[{row}, 0] (replica count of logical expert {row}) must be "
            f"in [1, F-1={f - 1}], got {counts[row].item()}"
        )
    return False


def _mode0_physical_by_expert(
    eplb_table: torch.Tensor, counts: torch.Tensor, local_rank_id: int, world_size: int
) -> torch.Tensor:
    """(E,) the physical id each expert maps to on this rank: every token of a rank takes the same.

    The slot ``local_rank_id // ceil(world_size / count) + 1`` depends on the count alone, so it
    is worked out in Python for the F-1 possible counts (integer division is a scalar loop on
    CPU; F is small) and looked up per expert. ``counts`` must already lie in [0, F-1]."""
    f = eplb_table.size(1)
    slot_by_count = [1] + [local_rank_id // -(-world_size // count) + 1 for count in range(1, f)]
    slots = torch.tensor(slot_by_count, device=eplb_table.device).index_select(0, counts)
    return eplb_table.gather(1, slots.view(-1, 1)).view(-1)


def _mode1_physical(eplb_table: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
    """(BS*K,) ``eplb_table[e, i % count_e + 1]`` for every element (i, j), i its token ROW.

    The remainder is taken in float32, where division is vectorised (integer division is a
    scalar loop on CPU), from the row's middle ``i + 0.5``: ``(i + 0.5) / c`` lies at least
    ``0.5 / c`` away from every whole number, so its floor is ``i // c`` even where a device
    divides a few ulps off, and ``i + 0.5 - (i // c) * c`` truncates to ``i % c`` (i < BS <= 512
    and c < F are exact in float32)."""
    bs, k = expert_ids.shape
    f = eplb_table.size(1)
    flat_ids = expert_ids.reshape(-1)
    counts = eplb_table.select(1, 0).to(torch.float32).index_select(0, flat_ids).view(bs, k)
    row_middles = torch.arange(0.5, bs, dtype=torch.float32, device=counts.device).view(bs, 1)
    quotients = torch.div(row_middles, counts).floor_()
    slots = torch.addcmul(row_middles, quotients, counts, value=-1).to(torch.int32)
    # Flat index e*F + slot + 1: the +1 is the table viewed from its second element.
    return eplb_table.reshape(-1)[1:].index_select(0, torch.add(slots.view(-1), flat_ids, alpha=f))


def _map_to_physical(args) -> torch.Tensor:
    """balanced_expert_ids (BS, K) in expert_ids' dtype."""
    expert_ids, eplb_table = args.expert_ids, args.eplb_table
    flat_ids = expert_ids.reshape(-1)
    counts = eplb_table.select(1, 0)
    f = eplb_table.size(1)
    every_count_valid = _check_values(flat_ids, counts, f)
    if args.balance_mode == 0:
        if not every_count_valid:  # experts no token uses: keep their lookups inside the row
            counts = counts.clamp(0, f - 1)
        physical_by_expert = _mode0_physical_by_expert(eplb_table, counts, args.local_rank_id, args.world_size)
        balanced = physical_by_expert.index_select(0, flat_ids)
    else:
        balanced = _mode1_physical(eplb_table, expert_ids)
    return balanced.view(expert_ids.shape).to(expert_ids.dtype)


def _pairwise_sum(values: torch.Tensor) -> torch.Tensor:
    """(BS, 1) row sums as a binary tree over adjacent pairs, the row padded with zeros to 2^n."""
    bs, k = values.shape
    padded = 1 << (k - 1).bit_length()
    level = torch.nn.functional.pad(values, (0, padded - k)) if padded != k else values
    while level.size(1) > 1:
        level = torch.add(*level.view(bs, -1, 2).unbind(2))
    return level


def _pruned_mask(args) -> torch.Tensor:
    """keep[i, j] = s[j] >= threshold[j] * sum(s) in float32; nothing kept for an inactive token."""
    scales = args.expert_scales.detach().to(torch.float32)  # fp16/bf16 widen exactly
    row_sums = _pairwise_sum(scales)
    if args.active_mask is not None:
        # An inactive token's sum is NaN: every comparison with it is False, whatever the
        # threshold's sign (cheaper than and-ing a broadcast mask afterwards).
        row_sums = torch.where(args.active_mask.view(-1, 1), row_sums, float("nan"))
    return scales >= row_sums * args.pruning_threshold.detach()


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
    """``(balanced_expert_ids, balanced_active_mask)``, both (BS, K), as the NPU computes them."""
    args = schema.arguments(locals())
    check_arguments(args)
    balanced = _map_to_physical(args)
    if expert_scales is None:
        mask = torch.ones(expert_ids.shape, dtype=torch.bool, device=expert_ids.device)
    else:
        mask = _pruned_mask(args)
    return balanced, mask
