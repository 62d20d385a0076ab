"""Value checks for what the NPU never checks: call them when a table is built or loaded.

The kernel trusts the values of its inputs; a bad table or id reads out of bounds silently on the
device. These validators read the values (a host sync), so they are not in the op's hot path:
call them when you load or rebuild an EPLB table, or in tests. Each raises ValueError naming the
first offending row/column and its value.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from torchair_plugin import limits


def _as_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value.detach().cpu()


def check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    """``value`` as an int in [low, high] (no upper bound when ``high`` is None). Python and numpy
    integers are accepted alike (tables and loads often come from numpy); bool is refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {bound}, got {value}")
    return value


def max_columns(world_size: int, balance_mode: int) -> int:
    """The op's bound on F: world_size + 1 in balance_mode 0, 769 in mode 1 (which ignores world_size)."""
    return world_size + 1 if balance_mode == 0 else limits.MODE1_MAX_F


def _count_error(row: int, count: int, world_size: int, f: int, balance_mode: int) -> str:
    if balance_mode == 1:
        bound = f"[1, F-1={f - 1}]"
    else:
        bound = f"[1, min(world_size={world_size}, F-1={f - 1})]"
    message = f"eplb_table[{row}, 0] (replica count of logical expert {row}) must be in {bound}, got {count}"
    if balance_mode == 0 and world_size < count <= f - 1:
        message += (
            "; balance_mode 0 uses at most world_size replicas per expert: cap the replicas at world_size "
            "(plan_placement does), or use the table with balance_mode=1"
        )
    return message


def _validate_layer(table: torch.Tensor, world_size: int, balance_mode: int) -> int:
    num_experts, f = table.shape
    counts = table[:, 0]
    # Mode 0 splits an expert over groups of source ranks: more replicas than ranks are never used.
    max_count = min(world_size, f - 1) if balance_mode == 0 else f - 1
    bad = ((counts < 1) | (counts > max_count)).nonzero()
    if bad.numel():
        row = int(bad[0].item())
        raise ValueError(_count_error(row, int(counts[row].item()), world_size, f, balance_mode))
    # After the counts: a count beyond world_size needs a wider row, and its message says what to do.
    max_f = max_columns(world_size, balance_mode)
    if f > max_f:
        bound = "world_size + 1" if balance_mode == 0 else "the op's limit"
        raise ValueError(
            f"eplb_table's F (columns) must be <= {max_f} ({bound} in balance_mode {balance_mode}), got {f}"
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


def validate_eplb_table(eplb_table: torch.Tensor, world_size: int, *, balance_mode: int = 0) -> int:
    """Check an eplb_table row by row; return the number of physical experts (sum of counts).

    Row e is ``[count, phys_1, ..., phys_count, padding...]``. Checked: int32; 2-D (E, F), or a
    per-layer stack (L, E, F) whose layers hold the same number of physical experts; E >= 1 and
    2 <= F <= world_size + 1 (balance_mode 0) or 769 (balance_mode 1), the op's bound; every count
    in [1, F-1], and in balance_mode 0 also <= world_size; every physical id in [0, sum of counts)
    and used by exactly one (expert, replica); sum of counts <= 1024 and divisible by world_size
    (it is the ``moe_expert_num`` that dispatch/combine are given: the same number of slots on
    every rank). The padding after a row's replicas is not read by the NPU and is not checked.
    A table valid for balance_mode 0 is valid for mode 1 too.
    """
    table = _as_tensor("eplb_table", eplb_table)
    world_size = check_int("world_size", world_size, 1)
    balance_mode = check_int("balance_mode", balance_mode, 0, 1)
    if table.dtype not in limits.INPUT_DTYPES["eplb_table"]:
        raise ValueError(f"eplb_table.dtype must be int32, got {table.dtype}")
    if table.dim() not in (2, 3) or table.size(-2) < 1 or table.size(-1) < 2:
        raise ValueError(
            f"eplb_table.shape must be (moe_expert_num >= 1, F >= 2) or (layers, moe_expert_num >= 1, F >= 2), "
            f"got {tuple(table.shape)}"
        )
    if table.dim() == 2:
        return _validate_layer(table, world_size, balance_mode)
    totals = []
    for layer, layer_table in enumerate(table):
        try:
            totals.append(_validate_layer(layer_table, world_size, balance_mode))
        except ValueError as error:
            raise ValueError(f"layer {layer}: {error}") from None
    if len(set(totals)) > 1:
        raise ValueError(f"every layer must hold the same number of physical experts, got {totals}")
    return totals[0]


def validate_expert_ids(expert_ids: torch.Tensor, moe_expert_num: int) -> None:
    """Every logical expert id in [0, moe_expert_num)."""
    ids = _as_tensor("expert_ids", expert_ids)
    moe_expert_num = check_int("moe_expert_num", moe_expert_num, 1)
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
    first_false = int(inactive[0].item())
    late_true = mask[first_false:].nonzero()
    if late_true.numel():
        raise ValueError(
            f"active_mask must hold all True entries before any False: active_mask[{first_false}] is "
            f"False but active_mask[{first_false + late_true[0].item()}] is True"
        )
    return first_false
