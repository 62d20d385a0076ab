"""Build ``eplb_table`` from the placement formats users have, and convert it back.

An eplb_table is int32 of shape (moe_expert_num, F); row e is
``[count, phys_1, ..., phys_count, PADDING, ...]`` (see docs/op.md). The order of a row's
replicas matters in balance_mode 0: the k-th listed replica serves the k-th contiguous group of
source ranks. Every builder lists them in ascending physical id, whatever order its input has, so
that the same placement gives the same table from any format (phy2log carries no replica order
at all), and source-rank group k goes to the k-th replica in rank order. Every builder validates
its result with ``validate_eplb_table`` for the ``balance_mode`` it is given, so a table that
would read out of bounds on the NPU never leaves here.

Formats:
- ``phy2log`` [P]: physical slot j holds logical expert phy2log[j] (DeepSeek EPLB, SGLang, vLLM
  expert maps).
- ``log2phy`` [E, M] padded with -1, with ``logcnt`` [E] (DeepSeek EPLB).
- vLLM's ``logical_to_physical_map`` [E, R+1] padded with -1, with ``logical_replica_count`` [E].
Each accepts a leading layer dimension ([L, ...]) and then returns [L, E, F] with one F for all
layers. F is the smallest that fits (max count + 1, at least 2) unless ``num_columns`` fixes it,
so that a compiled graph keeps its shapes across rebalances.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from torchair_plugin import limits
from torchair_plugin.eplb._arrays import INT64, check_range, expert_count, first_bad, int_array, positive_int
from torchair_plugin.validate import check_int, max_columns, validate_eplb_table

PADDING = -1
"""Value of the unused entries after a row's replicas. The NPU never reads them (the replica
index never exceeds count); -1 is the padding of DeepSeek's and vLLM's maps, and an obviously
invalid id should anything read it."""


def _num_columns(counts: np.ndarray, world_size: int, num_columns: Optional[int], balance_mode: int) -> int:
    needed = max(2, int(counts.max()) + 1)
    if num_columns is None:
        return needed
    # The op's bound on F: a larger table is unusable in that mode.
    high = max_columns(world_size, balance_mode)
    if (
        isinstance(num_columns, bool)
        or not isinstance(num_columns, (int, np.integer))
        or not needed <= num_columns <= high
    ):
        limit = "world_size + 1" if balance_mode == 0 else "the op's limit"
        raise ValueError(
            f"num_columns must be an int in [max replica count + 1 = {needed}, {limit} = {high}], got {num_columns!r}"
        )
    return int(num_columns)


def _assemble(
    log2phy: np.ndarray, counts: np.ndarray, f: int, world_size: int, balance_mode: int, layer: Optional[int]
) -> torch.Tensor:
    """One layer's table from replica lists (ids already in [0, P)); validated, errors prefixed
    with the layer."""
    table = np.full((counts.shape[0], f), PADDING, dtype=np.int32)
    table[:, 0] = counts
    width = min(f - 1, log2phy.shape[1])
    in_row = np.arange(width)[None, :] < counts[:, None]
    table[:, 1 : 1 + width][in_row] = log2phy[:, :width][in_row]
    result = torch.from_numpy(table)
    try:
        validate_eplb_table(result, world_size, balance_mode=balance_mode)
    except ValueError as error:
        raise ValueError(f"layer {layer}: {error}" if layer is not None else str(error)) from None
    return result


def _build(layers, world_size: int, num_columns: Optional[int], balance_mode: int, stacked: bool) -> torch.Tensor:
    """Tables from per-layer (log2phy, counts) pairs: one F for all layers."""
    f = _num_columns(np.concatenate([counts for _, counts in layers]), world_size, num_columns, balance_mode)
    tables = [
        _assemble(log2phy, counts, f, world_size, balance_mode, i if stacked else None)
        for i, (log2phy, counts) in enumerate(layers)
    ]
    return torch.stack(tables) if stacked else tables[0]


def _replicas_from_phy2log(phy2log: np.ndarray, num_logical: int, where: str) -> Tuple[np.ndarray, np.ndarray]:
    bad = (phy2log < 0) | (phy2log >= num_logical)
    if bad.any():
        slot = first_bad(bad)[0]
        raise ValueError(f"{where}[{slot}] must be a logical expert id in [0, {num_logical}), got {phy2log[slot]}")
    counts = np.bincount(phy2log, minlength=num_logical)
    if (counts == 0).any():
        missing = int(np.argmin(counts))
        raise ValueError(f"logical expert {missing} has no physical slot in {where}: every expert needs one")
    order = np.argsort(phy2log, kind="stable")  # ascending physical id within each expert
    log2phy = np.full((num_logical, int(counts.max())), PADDING, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    replica = np.arange(phy2log.shape[0]) - np.repeat(starts, counts)
    log2phy[phy2log[order], replica] = order
    return log2phy, counts


def table_from_phy2log(
    phy2log,
    world_size: int,
    *,
    num_logical: Optional[int] = None,
    num_columns: Optional[int] = None,
    balance_mode: int = 0,
) -> torch.Tensor:
    """eplb_table from phy2log [P] (or [L, P]); replicas in ascending physical id.

    ``num_logical`` defaults to max id + 1; every logical expert must have a slot. ``balance_mode``
    is the mode the table is validated for (1 allows more replicas than ranks).
    """
    world_size = positive_int("world_size", world_size)
    balance_mode = check_int("balance_mode", balance_mode, 0, 1)
    array = int_array("phy2log", phy2log, (1, 2))
    stacked = array.ndim == 2
    if not 0 < array.shape[-1] <= limits.MAX_EXPERTS:
        raise ValueError(
            f"phy2log must hold 1 to {limits.MAX_EXPERTS} physical experts (the op's limit), got shape {array.shape}"
        )
    if num_logical is None:
        # Bounded before anything is sized by it: an id of 10**9 must not allocate 10**9 counts.
        check_range(
            "phy2log",
            array,
            0,
            limits.MAX_EXPERTS - 1,
            f"a logical expert id: the op takes at most {limits.MAX_EXPERTS} experts",
        )
        num_logical = int(array.max()) + 1
    num_logical = expert_count("num_logical", num_logical)
    rows = array if stacked else array[None]
    layers = [
        _replicas_from_phy2log(row, num_logical, f"phy2log[{i}]" if stacked else "phy2log")
        for i, row in enumerate(rows)
    ]
    return _build(layers, world_size, num_columns, balance_mode, stacked)


def _check_unique(map_name: str, mapping: np.ndarray, in_row: np.ndarray) -> None:
    """No physical id twice within a layer, named by its two places in the caller's map (ids are
    already in [0, P))."""
    places = np.argwhere(in_row)  # row-major, like mapping[in_row]
    layer = places[:, 0] if mapping.ndim == 3 else np.zeros(len(places), dtype=np.int64)
    ids = mapping[in_row]
    key = layer * (int(ids.max()) + 1) + ids
    order = np.argsort(key, kind="stable")
    repeated = np.flatnonzero(key[order][1:] == key[order][:-1])
    if repeated.size:
        first, second = places[order[repeated[0]]], places[order[repeated[0] + 1]]
        raise ValueError(
            f"{map_name}{first.tolist()} and {map_name}{second.tolist()} hold the same physical expert "
            f"{ids[order[repeated[0]]]}: each physical slot holds exactly one logical expert"
        )


def _replica_lists(
    map_name: str, count_name: str, mapping, counts, world_size: int, num_columns: Optional[int], balance_mode: int
) -> torch.Tensor:
    """The log2phy-style formats: a -1 padded map plus per-expert replica counts."""
    world_size = positive_int("world_size", world_size)
    balance_mode = check_int("balance_mode", balance_mode, 0, 1)
    mapping = int_array(map_name, mapping, (2, 3))
    counts = int_array(count_name, counts, (mapping.ndim - 1,))
    if counts.shape != mapping.shape[:-1]:
        raise ValueError(f"{count_name}.shape must be {mapping.shape[:-1]} to match {map_name}, got {counts.shape}")
    bad = (counts < 1) | (counts > mapping.shape[-1])
    if bad.any():
        where = first_bad(bad)
        raise ValueError(
            f"{count_name}{list(where)} (replicas of a logical expert) must be in [1, {map_name}.shape[-1]="
            f"{mapping.shape[-1]}], got {counts[where]}"
        )
    # Ids are checked here, by their place in the caller's map, before any cast or reordering.
    in_row = np.arange(mapping.shape[-1]) < counts[..., None]
    totals = np.broadcast_to(counts.sum(-1)[..., None, None], mapping.shape)
    bad = in_row & ((mapping < 0) | (mapping >= totals))
    if bad.any():
        where = first_bad(bad)
        raise ValueError(
            f"{map_name}{list(where)} (replica {where[-1] + 1} of logical expert {where[-2]}) must be a physical "
            f"expert id in [0, sum of {count_name}={totals[where]}), got {mapping[where]}"
        )
    _check_unique(map_name, mapping, in_row)
    ordered = np.sort(np.where(in_row, mapping, INT64.max), axis=-1)  # ascending ids, padding last
    stacked = mapping.ndim == 3
    layers = list(zip(ordered, counts)) if stacked else [(ordered, counts)]
    return _build(layers, world_size, num_columns, balance_mode, stacked)


def table_from_log2phy(
    log2phy, logcnt, world_size: int, *, num_columns: Optional[int] = None, balance_mode: int = 0
) -> torch.Tensor:
    """eplb_table from DeepSeek EPLB's ``log2phy`` [E, M] (-1 padded) and ``logcnt`` [E] (or [L, ...]);
    replicas in ascending physical id."""
    return _replica_lists("log2phy", "logcnt", log2phy, logcnt, world_size, num_columns, balance_mode)


def table_from_vllm(
    logical_to_physical_map,
    logical_replica_count,
    world_size: int,
    *,
    num_columns: Optional[int] = None,
    balance_mode: int = 0,
) -> torch.Tensor:
    """eplb_table from vLLM's ``logical_to_physical_map`` [E, R+1] (-1 padded) and
    ``logical_replica_count`` [E] (or [L, ...]); replicas in ascending physical id."""
    return _replica_lists(
        "logical_to_physical_map",
        "logical_replica_count",
        logical_to_physical_map,
        logical_replica_count,
        world_size,
        num_columns,
        balance_mode,
    )


def _validated_layers(eplb_table, world_size: int, balance_mode: int) -> Tuple[torch.Tensor, int]:
    """(tables as a [L, E, F] stack, physical experts per layer)."""
    total = validate_eplb_table(eplb_table, world_size, balance_mode=balance_mode)
    tables = eplb_table.detach().cpu()
    return (tables if tables.dim() == 3 else tables[None]), total


def table_to_log2phy(eplb_table: torch.Tensor, world_size: int, *, width: Optional[int] = None, balance_mode: int = 0):
    """Inverse to DeepSeek's/vLLM's format: ``(log2phy [E, width], counts [E])`` int64, -1 padded.

    ``width`` defaults to F - 1 (vLLM's map has width num_redundant + 1: pass it).
    """
    tables, _ = _validated_layers(eplb_table, world_size, balance_mode)
    f = tables.shape[-1]
    counts = tables[..., 0].long()
    # At least the largest replica count; a replica count never exceeds the op's 1024 experts.
    width = f - 1 if width is None else check_int("width", width, int(counts.max()), limits.MAX_EXPERTS)
    replicas = torch.full((*counts.shape, width), PADDING, dtype=torch.int64)
    columns = min(width, f - 1)
    in_row = torch.arange(columns) < counts[..., None]
    replicas[..., :columns] = torch.where(in_row, tables[..., 1 : 1 + columns].long(), PADDING)
    if eplb_table.dim() == 2:
        return replicas[0], counts[0]
    return replicas, counts


def table_to_phy2log(eplb_table: torch.Tensor, world_size: int, *, balance_mode: int = 0) -> torch.Tensor:
    """Inverse: phy2log [P] int64 (or [L, P] for a stack); physical slot j holds logical phy2log[j]."""
    tables, total = _validated_layers(eplb_table, world_size, balance_mode)
    phy2log = torch.empty((tables.shape[0], total), dtype=torch.int64)
    in_row = torch.arange(tables.shape[-1] - 1) < tables[..., :1]
    for layer, (table, mask) in enumerate(zip(tables, in_row)):
        logical = torch.arange(table.shape[0])[:, None].expand_as(mask)
        phy2log[layer, table[:, 1:][mask].long()] = logical[mask]
    return phy2log if eplb_table.dim() == 3 else phy2log[0]
