"""Values derived from an eplb_table, remembered per table *content*, per thread, on CPU.

The op runs on every MoE layer of every step while an EPLB table changes every few minutes, so
what depends only on the table (the physical id each expert maps to) is worth computing once.

What invalidates a remembered value: any change of the table's bytes, however it was made. Every
call compares the table with a private snapshot taken when the values were derived (a memcmp of
E*F int32; the cost of the comparison does not depend on how the table was written). So an
in-place op on the tensor or on any view of it, ``copy_``, a write through a different tensor on
the same memory (``.data``, ``set_``, ``torch.from_numpy`` of the same array, numpy, DLPack) and a
new table allocated where a freed one was are all seen. Torch's version counter would miss several
of these: ``.data`` and ``set_`` aliases count their own writes, numpy writes are not counted at
all, and a reused address starts a new counter that can match an old one.

The table's identity (address, shape) only picks the snapshot to compare with: the same content at
another address is a separate entry. Only contiguous tables are remembered (the comparison reads
their bytes in one run); others are derived on every call, as before.

Bounds, per thread: at most ``MAX_ENTRIES`` tables and ``MAX_BYTES`` of snapshots and values. A
new table evicts the oldest ones; a value that would exceed the bytes is not stored (the caller
then derives it on every call) rather than evicting a table still in use, so a working set larger
than the cache degrades to per-call work instead of rebuilding values that are dropped again.
Per-thread entries keep one thread's refresh from racing another's comparison.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Dict, Hashable, Optional

import torch

MAX_ENTRIES = 128
MAX_BYTES = 64 << 20
# A table rewritten before every call would pay the comparison and the snapshot for nothing:
# after CHANGES_BEFORE_PAUSE changes in a row its memo sits out the next PAUSE_CALLS calls (they
# derive everything per call, as without a memo), then compares again.
CHANGES_BEFORE_PAUSE = 2
PAUSE_CALLS = 64


def _load_memcmp():
    """libc's memcmp, or None where there is no C library to load (torch.equal is used then)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    memcmp = ctypes.CDLL(name).memcmp
    memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    memcmp.restype = ctypes.c_int
    return memcmp


_memcmp = _load_memcmp()


def _nbytes(tensor: Optional[torch.Tensor]) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


class TableMemo:
    """The values derived from one table content, by key. ``seen_unchanged`` is False on the call
    that found the content new, True once a later call has found it unchanged: values costlier
    than a call's own work are derived only then, so a table rewritten every call never pays."""

    __slots__ = ("snapshot", "values", "seen_unchanged", "nbytes", "changes_in_a_row", "calls_to_sit_out",
                 "_address", "_size", "_cache")

    def __init__(self, table: torch.Tensor, cache: "_ThreadCache"):
        self.values: Dict[Hashable, Optional[torch.Tensor]] = {}
        self.changes_in_a_row = self.calls_to_sit_out = 0
        self._cache = cache
        self._take_snapshot(table)

    def _take_snapshot(self, table: torch.Tensor) -> None:
        # A new tensor, never an in-place copy: one made in inference mode could not be written
        # outside it (reading it is allowed, and is all the memo does).
        self.snapshot = table.clone(memory_format=torch.contiguous_format)
        self._address, self._size = self.snapshot.data_ptr(), _nbytes(self.snapshot)
        self.nbytes = self._size
        self.seen_unchanged = False

    def matches(self, table: torch.Tensor) -> bool:
        """Whether table's bytes equal the snapshot's (same shape and contiguous: the caller's key)."""
        if _memcmp is None:
            return torch.equal(table, self.snapshot)
        # Not torch.equal: a per-element loop behind a TensorIterator, several times slower.
        return _memcmp(table.data_ptr(), self._address, self._size) == 0

    def refresh(self, table: torch.Tensor) -> None:
        """The table changed: take a new snapshot and forget every derived value."""
        self._cache.nbytes -= self.nbytes - self._size
        self.values.clear()
        self._take_snapshot(table)
        self.changes_in_a_row += 1
        if self.changes_in_a_row >= CHANGES_BEFORE_PAUSE:
            self.changes_in_a_row = 0  # the first comparison after the pause meets a stale snapshot
            self.calls_to_sit_out = PAUSE_CALLS

    def store(self, key: Hashable, value: Optional[torch.Tensor]) -> None:
        """Remember ``value`` (None: "this content has no such value") if the byte bound allows."""
        size = _nbytes(value)
        if self._cache.nbytes + size <= MAX_BYTES:
            self.values[key] = value
            self.nbytes += size
            self._cache.nbytes += size


class _ThreadCache:
    def __init__(self):
        self.memos: Dict[tuple, TableMemo] = {}  # insertion order: oldest first
        self.nbytes = 0

    def add(self, key: tuple, table: torch.Tensor) -> TableMemo:
        needed = _nbytes(table)
        while self.memos and (len(self.memos) >= MAX_ENTRIES or self.nbytes + needed > MAX_BYTES):
            self.nbytes -= self.memos.pop(next(iter(self.memos))).nbytes
        memo = self.memos[key] = TableMemo(table, self)
        self.nbytes += memo.nbytes
        return memo


_thread_state = threading.local()


def memo_for(table: torch.Tensor) -> Optional[TableMemo]:
    """The memo of a CPU table's current content, or None: not remembered (not contiguous), or
    sitting out calls after changes in a row."""
    if not table.is_contiguous():
        return None
    try:
        cache = _thread_state.cache
    except AttributeError:
        cache = _thread_state.cache = _ThreadCache()
    key = (table.data_ptr(), table.shape)
    memo = cache.memos.get(key)
    if memo is None:
        return cache.add(key, table)
    if memo.calls_to_sit_out:
        memo.calls_to_sit_out -= 1
        return None
    if memo.matches(table):
        memo.seen_unchanged = True
        memo.changes_in_a_row = 0
    else:
        memo.refresh(table)
    return memo


def clear() -> None:
    """Forget this thread's memos (tests; freeing memory)."""
    _thread_state.cache = _ThreadCache()
