"""The placement formats serving stacks keep, to and from an eplb_table.

- **vllm-ascend's expert-map JSON** (its static placement file, also what its EPLB records):
  ``{"moe_layer_count": L, "layer_list": [{"layer_id": i, "device_count": D, "device_list":
  [{"device_id": j, "device_expert": [logical ids on device j, slot by slot]}, ...]}, ...]}``.
  Device j's k-th entry is physical expert ``j * slots + k`` (the dispatch convention).
- **Per-rank one-replica maps** (vllm-ascend model runner v1 ``log2phy``, MindIE, xLLM): rank r
  routes logical expert e to physical expert ``maps[r][e]``, (world_size, E) or
  (world_size, L, E). Together, the maps of all ranks name every replica that some rank uses;
  the table lists them in ascending id, so the op (mode 0: ``rank // ceil(world_size / count)``)
  may pick another replica of the same expert for a rank than the stack's own rule did
  (``rank % count``): the load per replica differs, the expert never does.
  ``table_to_rank_maps`` gives the op's own choice per rank, in the same format.
- **SGLang's** ``logical_to_all_physical_map`` (L, E, X) -1 padded with
  ``logical_to_all_physical_map_num_valid`` (L, E): DeepSeek's log2phy/logcnt under other names.

Every table built here is validated (see ``tables``); every input error names its place.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Tuple

import numpy as np
import torch

from torchair_plugin.eplb._arrays import first_bad, int_array
from torchair_plugin.eplb.tables import table_from_log2phy, table_from_phy2log, table_to_log2phy, table_to_phy2log
from torchair_plugin.validate import validate_eplb_table

_MISSING = object()


def _field(container, key, where: str):
    if not isinstance(container, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(container).__name__}")
    value = container.get(key, _MISSING)
    if value is _MISSING:
        raise ValueError(f"{where} has no {key!r}")
    return value


def _read_expert_map(data) -> dict:
    if isinstance(data, (str, os.PathLike)):
        try:
            with open(data) as f:
                return json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"{data}: cannot read the expert map: {error}") from None
    return data


def expert_map_phy2log(data) -> np.ndarray:
    """phy2log (L, P) from vllm-ascend's expert-map JSON (a dict, or the path of the file)."""
    data = _read_expert_map(data)
    layers = _field(data, "layer_list", "the expert map")
    count = _field(data, "moe_layer_count", "the expert map")
    if not isinstance(layers, list) or not layers or count != len(layers):
        size = len(layers) if isinstance(layers, list) else type(layers).__name__
        raise ValueError(f"moe_layer_count must equal the number of entries of layer_list ({size}), got {count!r}")
    phy2log = []
    for i, layer in enumerate(layers):
        devices = _field(layer, "device_list", f"layer_list[{i}]")
        if not isinstance(devices, list) or not devices:
            raise ValueError(f"layer_list[{i}].device_list must be a non-empty list, got {devices!r}")
        slots = [
            int_array(
                f"layer_list[{i}].device_list[{j}].device_expert",
                _field(device, "device_expert", f"layer_list[{i}].device_list[{j}]"),
                (1,),
            )
            for j, device in enumerate(devices)
        ]
        widths = {len(s) for s in slots}
        if len(widths) != 1 or 0 in widths:
            raise ValueError(
                f"layer_list[{i}]: every device must hold the same number (>= 1) of experts, "
                f"got {[len(s) for s in slots]}"
            )
        phy2log.append(np.concatenate(slots))
    shapes = {(len(layer["device_list"]), p.shape[0]) for layer, p in zip(layers, phy2log)}
    if len(shapes) != 1:
        raise ValueError(f"every layer must have the same devices and slots, got (devices, slots) {sorted(shapes)}")
    return np.stack(phy2log)


def table_from_expert_map(
    data, *, num_logical: Optional[int] = None, num_columns: Optional[int] = None, balance_mode: int = 0
) -> Tuple[torch.Tensor, int]:
    """(eplb_table (L, E, F), world_size) from vllm-ascend's expert-map JSON (dict or path);
    world_size is the devices per layer."""
    data = _read_expert_map(data)
    phy2log = expert_map_phy2log(data)
    world_size = len(data["layer_list"][0]["device_list"])
    table = table_from_phy2log(
        phy2log, world_size, num_logical=num_logical, num_columns=num_columns, balance_mode=balance_mode
    )
    return table, world_size


def table_to_expert_map(eplb_table: torch.Tensor, world_size: int, *, balance_mode: int = 0) -> dict:
    """vllm-ascend's expert-map JSON (a dict: ``json.dump`` it) from a table (E, F) or (L, E, F)."""
    phy2log = table_to_phy2log(eplb_table, world_size, balance_mode=balance_mode)
    phy2log = phy2log if phy2log.dim() == 2 else phy2log[None]
    slots = phy2log.shape[1] // world_size
    return {
        "moe_layer_count": phy2log.shape[0],
        "layer_list": [
            {
                "layer_id": layer,
                "device_count": world_size,
                "device_list": [
                    {"device_id": device, "device_expert": row[device * slots : (device + 1) * slots].tolist()}
                    for device in range(world_size)
                ],
            }
            for layer, row in enumerate(phy2log)
        ],
    }


def _phy2log_from_rank_maps(maps: np.ndarray, where: str) -> np.ndarray:
    """One layer: maps (world_size, E) -> phy2log (P,), P = largest id + 1; every physical id
    must be used by some rank and stand for one logical expert."""
    if (maps < 0).any():
        place = first_bad(maps < 0)
        raise ValueError(f"{where}{list(place)} must be a physical expert id >= 0, got {maps[place]}")
    total = int(maps.max()) + 1
    phy2log = np.full(total, -1, dtype=np.int64)
    first_seen = {}
    for (rank, expert), physical in np.ndenumerate(maps):
        if phy2log[physical] == -1:
            phy2log[physical] = expert
            first_seen[physical] = (rank, expert)
        elif phy2log[physical] != expert:
            other = first_seen[physical]
            raise ValueError(
                f"{where}[{other[0]}, {other[1]}] and {where}[{rank}, {expert}] send logical experts {other[1]} and "
                f"{expert} to the same physical expert {physical}: a physical slot holds one expert"
            )
    unused = np.flatnonzero(phy2log == -1)
    if unused.size:
        raise ValueError(
            f"physical expert {unused[0]} (of 0..{total - 1}) is used by no rank in {where}: per-rank maps show only "
            f"the replicas some rank routes to; build the table from the placement (phy2log) instead"
        )
    return phy2log


def table_from_rank_maps(rank_maps, *, num_columns: Optional[int] = None, balance_mode: int = 0) -> torch.Tensor:
    """eplb_table from every rank's one-replica map: (world_size, E) -> (E, F), or
    (world_size, L, E) -> (L, E, F). world_size = rank_maps.shape[0]."""
    maps = int_array("rank_maps", rank_maps, (2, 3))
    world_size = maps.shape[0]
    if maps.ndim == 2:
        return table_from_phy2log(
            _phy2log_from_rank_maps(maps, "rank_maps"),
            world_size,
            num_logical=maps.shape[1],
            num_columns=num_columns,
            balance_mode=balance_mode,
        )
    layers = [_phy2log_from_rank_maps(maps[:, layer], f"rank_maps[:, {layer}]") for layer in range(maps.shape[1])]
    sizes = {p.shape[0] for p in layers}
    if len(sizes) != 1:
        raise ValueError(
            f"every layer of rank_maps must use the same number of physical experts, got {[p.shape[0] for p in layers]}"
        )
    return table_from_phy2log(
        np.stack(layers), world_size, num_logical=maps.shape[2], num_columns=num_columns, balance_mode=balance_mode
    )


def table_to_rank_maps(eplb_table: torch.Tensor, world_size: int) -> torch.Tensor:
    """The replica the op picks in balance_mode 0 for every rank: int32 (world_size, E), or
    (world_size, L, E) for a stack. ``maps[r][e]`` is what ``local_rank_id=r`` returns for e."""
    validate_eplb_table(eplb_table, world_size)
    tables = eplb_table.detach().cpu().long()
    counts = tables[..., 0]
    group = -(-world_size // counts)  # ceil(world_size / count) ranks per replica
    ranks = torch.arange(world_size).view(world_size, *([1] * counts.dim()))
    slot = ranks // group + 1
    chosen = torch.gather(tables.expand(world_size, *tables.shape), -1, slot.unsqueeze(-1)).squeeze(-1)
    return chosen.to(torch.int32)


def table_from_sglang(
    logical_to_all_physical_map,
    logical_to_all_physical_map_num_valid,
    world_size: int,
    *,
    num_columns: Optional[int] = None,
    balance_mode: int = 0,
) -> torch.Tensor:
    """eplb_table from SGLang's replica map (E, X) / (L, E, X), -1 padded, and its num_valid
    (E,) / (L, E); replicas in ascending physical id."""
    try:
        return table_from_log2phy(
            logical_to_all_physical_map,
            logical_to_all_physical_map_num_valid,
            world_size,
            num_columns=num_columns,
            balance_mode=balance_mode,
        )
    except ValueError as error:
        raise ValueError(
            str(error)
            .replace("log2phy", "logical_to_all_physical_map")
            .replace("logcnt", "logical_to_all_physical_map_num_valid")
        ) from None


def table_to_sglang(
    eplb_table: torch.Tensor, world_size: int, *, width: Optional[int] = None, balance_mode: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SGLang's ``(logical_to_all_physical_map, logical_to_all_physical_map_num_valid)`` int64,
    -1 padded to ``width`` (default F - 1), from a table."""
    return table_to_log2phy(eplb_table, world_size, width=width, balance_mode=balance_mode)
