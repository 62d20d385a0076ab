"""Input normalisation shared by the EPLB tools: every public function accepts lists, numpy arrays
or torch tensors, and rejects bad values with a ValueError naming the argument and the place."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _to_numpy(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be array-like, got {type(value).__name__}: {error}") from None


def int_array(name: str, value, ndims: Sequence[int]) -> np.ndarray:
    """An integer array of one of the given ranks, as int64 (bool and float are refused)."""
    array = _to_numpy(name, value)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {array.shape}")
    return array.astype(np.int64)


def first_bad(mask: np.ndarray) -> tuple:
    """Index of the first True entry of a boolean array (row-major)."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def load_array(name: str, value, ndims: Sequence[int]) -> np.ndarray:
    """Finite, non-negative loads (token counts or rates) as float64."""
    array = _to_numpy(name, value)
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    if array.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {array.shape}")
    array = array.astype(np.float64)
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        where = first_bad(bad)
        raise ValueError(f"{name}{list(where)} must be finite, got {array[where]}")
    bad = array < 0
    if bad.any():
        where = first_bad(bad)
        raise ValueError(f"{name}{list(where)} must be >= 0, got {array[where]}")
    return array


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
