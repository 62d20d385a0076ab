"""Reference kernel for CPU and CUDA (and an NPU without the native kernel), bit-exact with the NPU.

On CPU the work is done by a small compiled kernel (``_cpu_kernel.c``, built on first use with
the machine's C compiler; see ``_cpu_kernel``): at serving sizes a Python kernel's fixed costs per
call exceed its arithmetic. What follows is the Python kernel, used on other devices, on CPU
where no compiler is found (or ``TORCHAIR_PLUGIN_CPU_KERNEL=python``), and to name bad values.
The C and the Python kernel are tested against the same golden loop.

Vectorised torch, no loop over tokens. It is written for few, cheap ops because it runs in
model code on every MoE layer, where a torch call costs more than its arithmetic:
- on CPU, what depends only on the table is derived once per table *content* (see
  ``_table_memo``): balance_mode 0 is then one gather of each token's expert from the per-expert
  physical ids, balance_mode 1 one gather from a (MAX_BS, E) table of the physical id by token row;
- a new table (or one off the CPU) takes the general path: int32 index arithmetic, one flattened
  gather per output, the replica of balance_mode 0 chosen per expert rather than per element;
- the pruning tree runs in float32 buffers reused per thread on CPU, their views made once: one
  ``add(out=)`` per level.

Semantics are the kernel's (see docs/op.md):
- balance_mode 0: replica ``local_rank_id // ceil(world_size / count) + 1`` of each expert;
- balance_mode 1: replica ``i % count + 1`` where i is the token ROW;
- pruning in float32 whatever torch's default dtype: ``s[j] >= threshold[j] * sum(s)``
  (equality keeps), the sum taken as AscendC documents its vector reductions, a binary tree over
  adjacent pairs (an assumption: not checked on hardware; see docs/op.md), and an inactive token
  (active_mask False) has every expert pruned;
- without pruning inputs the mask is all True (the NPU leaves it unwritten).
Values that would read out of bounds on the NPU (expert ids, replica counts of the experts in
use) raise ValueError naming the culprit instead of returning garbage. On CPU the gathers' own
bounds checks detect them for free (an invalid count is mapped to an out-of-range index, and a
table with one is never remembered), and the precise diagnosis runs only then; on other devices
an out-of-range gather is a fatal device assert, so the values are checked first (one host sync).
"""

from __future__ import annotations

import functools
import threading
from typing import Optional, Tuple

import torch

from torchair_plugin import _cpu_kernel, _table_memo, limits
from torchair_plugin.checks import check_required_tensors, check_update_expert_args
from torchair_plugin.schema import OP_NAME


# Integer division is not vectorised on CPU (a scalar loop): both modes look the replica up
# in small tables computed once per shape instead. They are cached per device and read-only.
# A count of 0 maps to _INVALID, far below any valid flat index, so the table gather rejects it.
_INVALID = -(2**30)


@functools.lru_cache(maxsize=64)
def _mode0_lookup(num_experts: int, f: int, world_size: int, local_rank_id: int, device: torch.device
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(slot[c] = rank // ceil(world_size / c) + 1 for c in [0, F); e * F for every expert e)."""
    slots = [_INVALID] + [local_rank_id // -(-world_size // c) + 1 for c in range(1, f)]
    row_starts = torch.arange(0, num_experts * f, f, dtype=torch.int32)
    return torch.tensor(slots, dtype=torch.int32, device=device), row_starts.to(device)


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
    """The token row of every flat (i, j) element of the largest batch; a batch uses a prefix."""
    return torch.arange(limits.MAX_BS, dtype=torch.int32, device=device).repeat_interleave(k)


# The checks depend on metadata only (shapes, dtypes, devices, attrs): an eager call whose
# signature already passed them skips them. The key is built inline from named parameters: a
# generic ``map`` over ``*args`` doubled the cost of the lookup (bench/reference-kernel-notes.md).
_PASSED_SIGNATURES: set = set()
_MAX_SIGNATURES = 1024


def _optional_metadata(tensor: Optional[torch.Tensor]):
    return None if tensor is None else (tensor.shape, tensor.dtype, tensor.device)


def _check_args(expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask,
                local_rank_id, world_size, balance_mode) -> None:
    """check_update_expert_args, remembered per signature for the eager hot path."""
    try:
        signature = (
            expert_ids.shape, expert_ids.dtype, expert_ids.device,
            eplb_table.shape, eplb_table.dtype, eplb_table.device,
            _optional_metadata(expert_scales), _optional_metadata(pruning_threshold),
            _optional_metadata(active_mask), local_rank_id, world_size, balance_mode,
        )
    except AttributeError:  # None or a non-tensor: the same message as every other bad argument
        check_required_tensors(expert_ids, eplb_table)
        raise
    if signature in _PASSED_SIGNATURES:
        return
    check_update_expert_args(
        expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask,
        local_rank_id, world_size, balance_mode,
    )
    if len(_PASSED_SIGNATURES) < _MAX_SIGNATURES:
        _PASSED_SIGNATURES.add(signature)


def _mode0_physical_by_expert(eplb_table, local_rank_id, world_size) -> torch.Tensor:
    """(E,) int32: the physical id every expert maps to on this rank. Raises for an invalid count.

    A flat index e * F + slot into the flat table: cheaper than a 2-D gather and its index views.
    1-D on purpose: index_select along dim 0 of an (E, 1) tensor copies row by row."""
    num_experts, f = eplb_table.shape
    slot_by_count, row_starts = _mode0_lookup(num_experts, f, world_size, local_rank_id, eplb_table.device)
    chosen = torch.add(row_starts, slot_by_count.index_select(0, eplb_table.select(1, 0)))
    return eplb_table.reshape(-1).index_select(0, chosen)


def _mode1_physical(eplb_table, rows, experts) -> torch.Tensor:
    """table[e, i % count_e + 1] for flat int32 token rows i and experts e, int32."""
    f = eplb_table.size(1)
    # Counts outside [0, F] are pinned to -1 or F first, where the lookup below rejects them: a
    # huge count must not wrap around int32 in ``count * MAX_BS`` back into the table's range.
    counts = eplb_table.select(1, 0).index_select(0, experts).clamp_(-1, f)
    lookup = torch.add(rows, counts, alpha=limits.MAX_BS)
    slot = _mode1_slot_by_count_and_row(f, eplb_table.device).index_select(0, lookup)
    return eplb_table.reshape(-1).index_select(0, torch.add(slot, experts, alpha=f))


def _mode1_physical_by_row(eplb_table) -> torch.Tensor:
    """(MAX_BS, E): [i, e] = the physical id of expert e for token row i. Raises for an invalid count."""
    num_experts = eplb_table.size(0)
    rows = torch.arange(limits.MAX_BS, dtype=torch.int32, device=eplb_table.device)
    experts = torch.arange(num_experts, dtype=torch.int32, device=eplb_table.device)
    flat = _mode1_physical(eplb_table, rows.repeat_interleave(num_experts), experts.repeat(limits.MAX_BS))
    return flat.view(limits.MAX_BS, num_experts)


def _map_to_physical(eplb_table, expert_ids, local_rank_id, world_size, balance_mode):
    """balanced_expert_ids (BS, K) int32. Out-of-range values raise IndexError/RuntimeError on CPU."""
    flat_ids = expert_ids.reshape(-1)
    if balance_mode == 0:
        flat = _mode0_physical_by_expert(eplb_table, local_rank_id, world_size).index_select(0, flat_ids)
    else:
        bs, k = expert_ids.shape
        flat = _mode1_physical(eplb_table, _flat_token_rows(k, eplb_table.device).narrow(0, 0, bs * k), flat_ids)
    return flat.view_as(expert_ids)


def _gather_takes_int32_index() -> bool:
    """torch >= 2.8 gathers with an int32 index; older versions need int64."""
    try:
        torch.gather(torch.zeros(1, 1, dtype=torch.int32), 1, torch.zeros(1, 1, dtype=torch.int32))
    except RuntimeError:
        return False
    return True


_GATHER_TAKES_INT32 = _gather_takes_int32_index()
_UNKNOWN = object()


def _remembered(memo, key, dtype, derive, *args) -> Optional[torch.Tensor]:
    """memo's value for key (in dtype), derived now if new; None when the table has an invalid
    count: only the general path tells whether a token uses it."""
    value = memo.values.get(key, _UNKNOWN)
    if value is _UNKNOWN:
        try:
            value = derive(*args).to(dtype)
        except (IndexError, RuntimeError):
            value = None
        memo.store(key, value)
    return value


def _map_remembered(eplb_table, expert_ids, local_rank_id, world_size, balance_mode):
    """balanced_expert_ids (BS, K) in expert_ids' dtype from values derived once per table
    content, or None where there are none: the caller takes the general path."""
    memo = _table_memo.memo_for(eplb_table)
    if memo is None:
        return None
    dtype = expert_ids.dtype
    if balance_mode == 0:
        key = (local_rank_id, world_size, dtype)
        chosen = _remembered(memo, key, dtype, _mode0_physical_by_expert, eplb_table, local_rank_id, world_size)
        # view_as, not view(expert_ids.shape): parsing a torch.Size costs ~2 us more a call.
        return None if chosen is None else chosen.index_select(0, expert_ids.reshape(-1)).view_as(expert_ids)
    if not memo.seen_unchanged:
        # A (MAX_BS, E) table costs many calls to build: not for a table rewritten every call.
        return None
    by_row = _remembered(memo, ("by_row", dtype), dtype, _mode1_physical_by_row, eplb_table)
    if by_row is None:
        return None
    index = expert_ids if _GATHER_TAKES_INT32 or dtype == torch.int64 else expert_ids.long()
    return torch.gather(by_row, 1, index)  # (BS, K): rows past BS are never read


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


def _map_after_diagnosis(eplb_table, expert_ids, *rest):
    """The careful path: ValueError for a value the NPU would read out of bounds with; otherwise
    the mapping, with the counts of experts nobody routes to made harmless (as on the NPU, they
    are never read)."""
    f = eplb_table.size(1)
    _check_values(expert_ids.reshape(-1), eplb_table.select(1, 0), f)
    safe_table = eplb_table.clone()
    safe_table[:, 0].clamp_(1, f - 1)
    return _map_to_physical(safe_table, expert_ids, *rest)


class _PruningWorkspace:
    """Float32 buffers for one (BS, K) pruning, with every view the pairwise tree reads made once.

    At BS=512 a torch call costs more than its arithmetic: a tree level written as
    ``torch.add(*x.view(bs, -1, 2).unbind(2))`` is three calls, while ``torch.add(even, odd,
    out=level)`` on views made here is one; widening the scales by ``copy_`` into
    the tree's first level is also cheaper than ``.to(torch.float32)``. The buffers never leave
    the op: its outputs are fresh tensors.
    """

    def __init__(self, bs: int, k: int, device: torch.device):
        padded = 1 << (k - 1).bit_length()
        # Usable in and outside inference mode: an inference tensor cannot be written outside it.
        with torch.inference_mode(False):
            # Every buffer says float32: the kernel's arithmetic, whatever torch's default dtype.
            leaves = torch.zeros(bs, padded, dtype=torch.float32, device=device)  # padding stays 0
            self.scales = leaves if padded == k else leaves.narrow(1, 0, k)
            levels, level = [], leaves
            while level.size(1) > 1:
                even, odd = level.view(bs, -1, 2).unbind(2)
                level = torch.empty(bs, level.size(1) // 2, dtype=torch.float32, device=device)
                levels.append((even, odd, level))
            self.levels = tuple(levels)
            self.sums = level  # (BS, 1): broadcasts against the (K,) or (1, K) threshold
            self.flat_sums = level.view(bs)
            self.masked_flat_sums = torch.empty(bs, dtype=torch.float32, device=device)
            self.masked_sums = self.masked_flat_sums.view(bs, 1)
            self.nan = torch.tensor(float("nan"), dtype=torch.float32, device=device)


# One workspace per (BS, K) per thread, reused on CPU only. On an accelerator a buffer shared by
# calls on different streams would race, and a call there is launch-bound anyway: it gets a fresh
# workspace (the same code, so the CPU tests cover it).
_thread_state = threading.local()
_MAX_WORKSPACES = 32


def _pruning_workspace(bs: int, k: int, expert_scales: torch.Tensor) -> _PruningWorkspace:
    if not expert_scales.is_cpu:
        return _PruningWorkspace(bs, k, expert_scales.device)
    workspaces = getattr(_thread_state, "workspaces", None)
    if workspaces is None:
        workspaces = _thread_state.workspaces = {}
    workspace = workspaces.get((bs, k))
    if workspace is None:
        if len(workspaces) >= _MAX_WORKSPACES:
            workspaces.clear()
        workspace = workspaces[(bs, k)] = _PruningWorkspace(bs, k, expert_scales.device)
    return workspace


def _pruned_mask(expert_scales, pruning_threshold, active_mask) -> torch.Tensor:
    """keep[i, j] = s[j] >= threshold[j] * sum(s) in float32, the sum a tree over adjacent pairs
    (as AscendC documents its reductions), and nothing kept for an inactive token."""
    bs, k = expert_scales.shape
    ws = _pruning_workspace(bs, k, expert_scales)
    if expert_scales.requires_grad:  # direct calls only: out= refuses inputs that need grad
        expert_scales = expert_scales.detach()
    ws.scales.copy_(expert_scales)  # fp16/bf16 widen exactly
    for even, odd, level in ws.levels:
        torch.add(even, odd, out=level)
    sums = ws.sums
    if active_mask is not None:
        # An inactive token keeps no expert: a NaN product compares False for every s[j]. This
        # costs one op on (BS,) instead of an AND over (BS, K).
        torch.where(active_mask, ws.flat_sums, ws.nan, out=ws.masked_flat_sums)
        sums = ws.masked_sums
    # [i, j] = sum_i * threshold_j; the float32 copy compares faster than fp16/bf16 scales.
    return torch.ge(ws.scales, torch.mul(sums, pruning_threshold))


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
    if eplb_table.is_cpu:  # and so is every other tensor: the checks require one device
        kernel = _cpu_kernel.function()
        if kernel is not None:
            result = _cpu_kernel.update_expert(
                kernel, expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask,
                local_rank_id, world_size, balance_mode,
            )
            if result is not None:
                return result
            # Values the NPU would read out of bounds with: the Python kernel names them.
    return _python_kernel(
        expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask, local_rank_id, world_size, balance_mode)


def python_reference(
    expert_ids: torch.Tensor,
    eplb_table: torch.Tensor,
    expert_scales: Optional[torch.Tensor] = None,
    pruning_threshold: Optional[torch.Tensor] = None,
    active_mask: Optional[torch.Tensor] = None,
    local_rank_id: int = -1,
    world_size: int = -1,
    balance_mode: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The reference with the Python kernel on every device (tests and benchmarks compare it)."""
    _check_args(
        expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask,
        local_rank_id, world_size, balance_mode,
    )
    return _python_kernel(
        expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask, local_rank_id, world_size, balance_mode)


def _python_kernel(expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask,
                   local_rank_id, world_size, balance_mode) -> Tuple[torch.Tensor, torch.Tensor]:
    mapping = (eplb_table, expert_ids, local_rank_id, world_size, balance_mode)
    if eplb_table.is_cpu:
        try:
            balanced = _map_remembered(*mapping)
            if balanced is None:
                balanced = _map_to_physical(*mapping)
        except (IndexError, RuntimeError):
            balanced = _map_after_diagnosis(*mapping)
    else:
        # Off the CPU an out-of-range gather is a fatal device-side assert: check values first.
        balanced = _map_after_diagnosis(*mapping)
    if balanced.dtype != expert_ids.dtype:
        balanced = balanced.to(expert_ids.dtype)

    if expert_scales is None:
        # ones_like: cheaper than torch.ones((bs, k), ...), which parses a size and a device.
        mask = torch.ones_like(balanced, dtype=torch.bool)
    else:
        mask = _pruned_mask(expert_scales, pruning_threshold, active_mask)
    return balanced, mask
