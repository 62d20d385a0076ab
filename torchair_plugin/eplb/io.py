"""Read routing and eplb_table files (.pt, .npy, .json) into validated tensors.

A file holds one array, or (.pt and .json) a dict from which ``key`` is taken. Every failure is a
one-line ValueError naming the file: unreadable, missing key, wrong rank or dtype, bad values
(by index: an int64 minimum or a uint64 beyond int64 is refused, never read as something else).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import warnings

import numpy as np
import torch

from torchair_plugin import limits
from torchair_plugin.eplb._arrays import INT32, check_expert_ids, check_range, int_array, load_array
from torchair_plugin.validate import validate_eplb_table

SUFFIXES = (".pt", ".npy", ".json")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _reason(error: Exception) -> str:
    """One line a CLI user can act on, from a reader's error. torch.load's weights-only refusal is
    several lines with terminal escapes and advice to unpickle the file; the cause is one line."""
    text = _ANSI_ESCAPE.sub("", str(error))
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsupported:
        return (
            f"it holds a {unsupported.group(1)} object; only tensors, lists, dicts and numbers are read "
            "(save a torch tensor, or use .npy)"
        )
    unpickler = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if unpickler:
        return f"not a file torch.save wrote ({unpickler.group(1).strip()})"
    if isinstance(error, pickle.UnpicklingError):  # torch_npu's torch.load raises it unwrapped
        return f"not a file torch.save wrote ({text.strip().splitlines()[0] if text.strip() else 'unreadable'})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ + (" (empty or truncated file)" if isinstance(error, EOFError) else "")
    return lines[0].split(". ")[0]  # the first sentence: the rest is advice for the library's user


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
            with warnings.catch_warnings():  # e.g. pickle-protocol notes: the error, if any, says it
                warnings.simplefilter("ignore")
                return torch.load(path, map_location="cpu", weights_only=True)
        with open(path) as f:
            return json.load(f)
    except Exception as error:  # any reader failure is bad input: report it with the path
        raise ValueError(f"{path}: cannot read: {_reason(error)}") from None


@contextlib.contextmanager
def in_file(path: str):
    """Prefix every ValueError raised inside with the file's path."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _entry(path: str, key: str):
    """The file's array, or its dict entry ``key``."""
    value = _read(path)
    if isinstance(value, dict):
        if key not in value:
            raise ValueError(f"{path}: no entry {key!r} (entries: {', '.join(map(str, value)) or 'none'})")
        value = value[key]
    return value


def load_routing(path: str) -> torch.Tensor:
    """Routing (world_size, tokens, K) int64: top-K logical expert ids (each in [0, 1024)) per token
    per source rank."""
    value = _entry(path, "routing")
    with in_file(path):
        array = int_array("routing", value, (3,))
        check_expert_ids("routing", array, limits.MAX_EXPERTS, f" (the op takes at most {limits.MAX_EXPERTS} experts)")
    return torch.from_numpy(array)


def load_eplb_table(path: str, world_size: int, *, balance_mode: int = 0) -> torch.Tensor:
    """An eplb_table (moe_expert_num, F), or a per-layer stack (L, moe_expert_num, F), cast to
    int32 and validated for ``world_size`` and ``balance_mode``."""
    value = _entry(path, "eplb_table")
    with in_file(path):
        array = int_array("eplb_table", value, (2, 3))
        check_range("eplb_table", array, INT32.min, INT32.max, "int32")
        table = torch.from_numpy(array.astype(np.int32))
        validate_eplb_table(table, world_size, balance_mode=balance_mode)
    return table


def load_layer_loads(path: str) -> np.ndarray:
    """Per-layer loads (L, E) float64: tokens per logical expert per MoE layer (finite, >= 0)."""
    value = _entry(path, "loads")
    with in_file(path):
        return load_array("loads", value, (2,))
