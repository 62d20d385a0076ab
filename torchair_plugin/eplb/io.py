"""Read routing and eplb_table files (.pt, .npy, .json) into validated tensors.

A file holds one array, or (.pt and .json) a dict from which ``key`` is taken. Every failure is a
ValueError naming the file: unreadable, missing key, wrong rank or dtype, bad values.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from torchair_plugin.eplb._arrays import int_array
from torchair_plugin.validate import validate_eplb_table

SUFFIXES = (".pt", ".npy", ".json")


def _read(path: str):
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(SUFFIXES)}")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".pt":
            return torch.load(path, map_location="cpu", weights_only=True)
        with open(path) as f:
            return json.load(f)
    except Exception as error:  # any reader failure is bad input: report it with the path
        raise ValueError(f"{path}: cannot read: {error}") from None


def load_array(path: str, key: str) -> np.ndarray:
    """An integer array from ``path``, or from ``path``'s dict entry ``key``, as int64."""
    value = _read(path)
    if isinstance(value, dict):
        if key not in value:
            raise ValueError(f"{path}: no entry {key!r} (entries: {', '.join(map(str, value)) or 'none'})")
        value = value[key]
    try:
        return int_array(key, value, (1, 2, 3))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def load_routing(path: str) -> torch.Tensor:
    """Routing (world_size, tokens, K) int64: top-K logical expert ids per token per source rank."""
    array = load_array(path, "routing")
    if array.ndim != 3:
        raise ValueError(f"{path}: routing must have shape (world_size, tokens, K), got {array.shape}")
    return torch.from_numpy(array)


def load_eplb_table(path: str, world_size: int) -> torch.Tensor:
    """An eplb_table (moe_expert_num, F), cast to int32 and validated for ``world_size``."""
    array = load_array(path, "eplb_table")
    if array.ndim != 2:
        raise ValueError(f"{path}: eplb_table must have shape (moe_expert_num, F), got {array.shape}")
    if array.size and np.abs(array).max() > np.iinfo(np.int32).max:
        raise ValueError(f"{path}: eplb_table values do not fit int32")
    table = torch.from_numpy(array.astype(np.int32))
    try:
        validate_eplb_table(table, world_size)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return table
