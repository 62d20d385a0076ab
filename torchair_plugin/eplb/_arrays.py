"""Input normalisation shared by the EPLB tools: every public function accepts lists, numpy arrays
or torch tensors, and rejects bad values with a ValueError naming the argument and the place.

No value is ever changed on the way in: an integer that does not fit the type it is cast to
(int64 here, int32 for a table) is refused by index, never wrapped or truncated.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from torchair_plugin import limits
from torchair_plugin.validate import check_int

INT32 = np.iinfo(np.int32)
INT64 = np.iinfo(np.int64)


def _to_numpy(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise ValueError(f"{name} must be a dense tensor, got layout {value.layout}")
        if value.device.type == "meta":
            raise ValueError(f"{name} must hold values, got a meta tensor (shape {tuple(value.shape)} only)")
        try:
            return value.detach().cpu().numpy()
        except (TypeError, RuntimeError):  # dtypes numpy lacks (bfloat16, float8, ...)
            raise ValueError(f"{name} must hold integers or floats, got dtype {value.dtype}") from None
    try:
        return np.asarray(value)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"{name} must be array-like, got {type(value).__name__}: {error}") from None


def first_bad(mask: np.ndarray) -> tuple:
    """Index of the first True entry of a boolean array (row-major)."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def check_range(name: str, array: np.ndarray, low: int, high: int, what: str) -> None:
    """Every entry in [low, high]; else name the first offender by index (``what`` says why)."""
    bad = (array < low) | (array > high)
    if bad.any():
        where = first_bad(bad)
        raise ValueError(f"{name}{list(where)} must be in [{low}, {high}] ({what}), got {array[where]}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _python_ints(name: str, value) -> np.ndarray:
    """Nested lists (JSON) element by element: numpy would read True as 1, mix huge and negative
    ints into float64, and keep other huge ints as objects; name the first element that is not
    an int64."""
    objects = np.array(value, dtype=object)
    is_int = np.frompyfunc(_is_int, 1, 1)(objects).astype(bool)
    if not is_int.all():
        where = first_bad(~is_int)
        raise ValueError(f"{name}{list(where)} must be an integer, got {objects[where]!r}")
    check_range(name, objects, INT64.min, INT64.max, "int64")
    return objects.astype(np.int64)


def int_array(name: str, value, ndims: Sequence[int]) -> np.ndarray:
    """An integer array of one of the given ranks, as int64 (bool and float are refused)."""
    array = _to_numpy(name, value)
    if isinstance(value, (list, tuple)) and array.size:
        array = _python_ints(name, value)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {array.shape}")
    if array.dtype == np.uint64:  # the only integer dtype whose values can exceed int64
        check_range(name, array, INT64.min, INT64.max, "int64")
    return array.astype(np.int64)


def check_expert_ids(name: str, ids: np.ndarray, num_experts: int, why: str = "") -> None:
    """Every entry a logical expert id in [0, num_experts); else name the first offender."""
    bad = (ids < 0) | (ids >= num_experts)
    if bad.any():
        where = first_bad(bad)
        raise ValueError(
            f"{name}{list(where)} must be a logical expert id in [0, {num_experts}){why}, got {ids[where]}"
        )


def load_array(name: str, value, ndims: Sequence[int]) -> np.ndarray:
    """Finite, non-negative loads (token counts or rates) as float64."""
    array = _to_numpy(name, value)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
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


def positive_int(name: str, value, high: Optional[int] = None) -> int:
    return check_int(name, value, 1, high)


def expert_count(name: str, value) -> int:
    """A count of logical experts: the op's moe_expert_num is at most 1024."""
    return check_int(name, value, 1, limits.MAX_EXPERTS)
