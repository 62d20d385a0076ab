"""Value checks for what the NPU never checks: call them when a table is built or loaded.

The kernel trusts the values of its inputs; a bad table or id reads out of bounds silently on the
device. These validators read the values (a host sync), so they are not in the op's hot path:
call them when you load or rebuild an EPLB table, or in tests. Each raises ValueError naming the
first offending row/column and its value.
"""

from __future__ import annotations

from typing import Optional

import torch

from torchair_plugin import limits


def _as_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value.detach().cpu()


def validate_eplb_table(eplb_table: torch.Tensor, world_size: int) -> int:
    """Check an eplb_table row by row; return the number of physical experts (sum of counts).

    Row e is ``[count, phys_1, ..., phys_count, padding...]``. Checked: int32, 2-D with F >= 2;
    every count in [1, min(world_size, F-1)]; every physical id in [0, sum of counts) and used by
    exactly one (expert, replica); sum of counts <= 1024 and divisible by world_size (it is the
    ``moe_expert_num`` that dispatch/combine are given: the same number of slots on every rank).
    The padding after a row's replicas is not read by the NPU and is not checked.
    """
    table = _as_tensor("eplb_table", eplb_table)
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if table.dtype not in limits.EPLB_TABLE_DTYPES:
        raise ValueError(f"eplb_table.dtype must be int32, got {table.dtype}")
    if table.dim() != 2 or table.size(1) < 2 or table.size(0) < 1:
        raise ValueError(f"eplb_table.shape must be (moe_expert_num >= 1, F >= 2), got {tuple(table.shape)}")
    num_experts, f = table.shape

    counts = table[:, 0]
    max_count = min(world_size, f - 1)
    bad = ((counts < 1) | (counts > max_count)).nonzero()
    if bad.numel():
        row = bad[0].item()
        raise ValueError(
            f"eplb_table[{row}, 0] (replica count of logical expert {row}) must be in "
            f"[1, min(world_size={world_size}, F-1={f - 1})], got {counts[row].item()}"
        )

    total = int(counts.sum())
    if total > limits.MAX_EXPERTS:
        raise ValueError(f"sum of replica counts must be <= {limits.MAX_EXPERTS}, got {total}")
    if total % world_size:
        raise ValueError(
            f"sum of replica counts (physical experts) must be divisible by world_size={world_size} "
            f"so that every rank holds the same number of slots, got {total}"
        )

    columns = torch.arange(1, f)
    in_row = columns.unsqueeze(0) <= counts.unsqueeze(1)  # (E, F-1): which entries are replicas
    replicas = table[:, 1:]
    bad = (in_row & ((replicas < 0) | (replicas >= total))).nonzero()
    if bad.numel():
        row, col = bad[0].tolist()
        raise ValueError(
            f"eplb_table[{row}, {col + 1}] (replica {col + 1} of logical expert {row}) must be a "
            f"physical expert id in [0, sum of counts={total}), got {replicas[row, col].item()}"
        )

    used = replicas[in_row]
    seen = torch.bincount(used.long(), minlength=total)
    if int(seen.max()) > 1:
        physical = int(seen.argmax())
        rows, cols = ((replicas == physical) & in_row).nonzero()[:2].unbind(1)
        raise ValueError(
            f"physical expert {physical} appears more than once in eplb_table, at "
            f"[{rows[0].item()}, {cols[0].item() + 1}] and [{rows[1].item()}, {cols[1].item() + 1}]: "
            f"each physical slot holds exactly one logical expert"
        )
    return total


def validate_expert_ids(expert_ids: torch.Tensor, moe_expert_num: int) -> None:
    """Every logical expert id in [0, moe_expert_num)."""
    ids = _as_tensor("expert_ids", expert_ids)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"expert_ids must hold integers, got {ids.dtype}")
    bad = ((ids < 0) | (ids >= moe_expert_num)).nonzero()
    if bad.numel():
        where = tuple(bad[0].tolist())
        raise ValueError(
            f"expert_ids{list(where)} must be in [0, moe_expert_num={moe_expert_num}), got {ids[where].item()}"
        )


def validate_active_mask(active_mask: torch.Tensor) -> Optional[int]:
    """The NPU requires active tokens first: no True after a False. Returns the first False row."""
    mask = _as_tensor("active_mask", active_mask)
    if mask.dtype != torch.bool or mask.dim() != 1:
        raise ValueError(f"active_mask must be a 1-D bool tensor, got {mask.dtype} of shape {tuple(mask.shape)}")
    inactive = (~mask).nonzero()
    if not inactive.numel():
        return None
    first_false = inactive[0].item()
    late_true = mask[first_false:].nonzero()
    if late_true.numel():
        raise ValueError(
            f"active_mask must hold all True entries before any False: active_mask[{first_false}] is "
            f"False but active_mask[{first_false + late_true[0].item()}] is True"
        )
    return first_false
