"""One owner of a model's device eplb_table, whose shape and address never change.

Captured graphs (aclgraph, GE with ``frozen_parameter``) read a table by its address, and
Dynamo guards on its shape: a rebalance that rebinds the attribute (``= new.clone()``) leaves the
graph reading the old table, and one that changes F recompiles. ``StableEplbTable`` allocates the
table once, (E, F) or (L, E, F) with F fixed at creation (default world_size + 1, the op's bound
in balance_mode 0, so that no later plan needs a wider row), and ``update`` writes a new plan
into the same storage with ``copy_`` only after the whole plan passed ``validate_eplb_table`` for
the balance mode in use, kept the number of physical experts (dispatch's ``moe_expert_num``), and,
in a process group, was found identical on every rank. An invalid plan never reaches the device.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from torchair_plugin.eplb._arrays import INT32, check_range, int_array
from torchair_plugin.eplb.rank_check import RankMismatchError, agree, table_digest
from torchair_plugin.eplb.tables import PADDING
from torchair_plugin.validate import check_int, max_columns, validate_eplb_table


def _host_table(name: str, value) -> np.ndarray:
    """Any integer tensor (any device), numpy array or nested list, as int64 on the host; values
    outside int32 are refused by index, never wrapped."""
    array = int_array(name, value, (2, 3))
    check_range(name, array, INT32.min, INT32.max, "int32")
    return array


def _fit_columns(name: str, array: np.ndarray, columns: int) -> np.ndarray:
    """``array`` with exactly ``columns`` columns: padded with PADDING, or cut where the columns
    cut hold only padding (past every row's count)."""
    width = array.shape[-1]
    if width < 1:
        raise ValueError(f"{name} must have at least one column (the replica counts), got shape {array.shape}")
    if width <= columns:
        padding = np.full((*array.shape[:-1], columns - width), PADDING, dtype=array.dtype)
        return np.concatenate([array, padding], axis=-1)
    too_many = array[..., 0] > columns - 1
    if too_many.any():
        where = tuple(int(i) for i in np.argwhere(too_many)[0])
        raise ValueError(
            f"{name}{list(where)}[0] (replica count of logical expert {where[-1]}) must be <= F - 1 = {columns - 1} "
            f"(the table's F was fixed at creation), got {array[where][0]}"
        )
    return array[..., :columns].copy()


class StableEplbTable:
    """The device eplb_table of one model (or one layer), updated in place.

    ``initial``: a valid table (E, F0) or per-layer stack (L, E, F0), any integer dtype and
    device (tensors, numpy, lists). ``num_columns``: the fixed F, default world_size + 1 (the
    op's bound in mode 0); it must be in [F needed by ``initial``, world_size + 1] in mode 0 and
    up to 769 in mode 1. ``device``: where the table lives (default: ``initial``'s device, CPU for
    non-tensors). ``tensor`` is the int32 table to hand the model (register it as a buffer, pass
    it to the op); it is the same tensor object, at the same address, for the owner's lifetime.
    """

    def __init__(
        self, initial, world_size: int, *, balance_mode: int = 0, num_columns: Optional[int] = None, device=None
    ):
        self.world_size = check_int("world_size", world_size, 1)
        self.balance_mode = check_int("balance_mode", balance_mode, 0, 1)
        high = max_columns(self.world_size, self.balance_mode)
        # world_size + 1 fits any plan of at most world_size replicas; mode 1 may ask for more.
        f = min(self.world_size + 1, high) if num_columns is None else check_int("num_columns", num_columns, 2, high)
        host = _fit_columns("initial", _host_table("initial", initial), f)
        table = torch.from_numpy(host.astype(np.int32))
        self.physical_experts = validate_eplb_table(table, self.world_size, balance_mode=self.balance_mode)
        if device is None:
            device = initial.device if isinstance(initial, torch.Tensor) else "cpu"
        self._tensor = table.to(device)
        self.version = 0  # number of updates written

    @property
    def tensor(self) -> torch.Tensor:
        """The device table the model reads (int32, shape fixed at creation)."""
        return self._tensor

    @property
    def shape(self) -> torch.Size:
        return self._tensor.shape

    @property
    def num_columns(self) -> int:
        return int(self._tensor.shape[-1])

    @property
    def slots_per_rank(self) -> int:
        """Physical experts per rank: sum of counts / world_size, fixed for the owner's lifetime."""
        return self.physical_experts // self.world_size

    def prepare(self, new) -> torch.Tensor:
        """``new`` as this owner would write it (int32, this F, on the host), after every check;
        ValueError naming the row (and layer) otherwise. Writes nothing."""
        host = _host_table("new", new)
        if host.shape[:-1] != tuple(self._tensor.shape[:-1]):
            expected = (*self._tensor.shape[:-1], "F")
            raise ValueError(
                f"new table must have shape {expected} (layers and logical experts fixed at creation), got {host.shape}"
            )
        table = torch.from_numpy(_fit_columns("new", host, self.num_columns).astype(np.int32))
        total = validate_eplb_table(table, self.world_size, balance_mode=self.balance_mode)
        if total != self.physical_experts:
            raise ValueError(
                f"new table must hold {self.physical_experts} physical experts (sum of counts; dispatch's "
                f"moe_expert_num and the slots per rank are fixed at creation), got {total}"
            )
        return table

    def update(self, new, *, group=None, check_ranks: Optional[bool] = None) -> bool:
        """Validate ``new`` completely, then write it into :attr:`tensor` in place.

        ``new`` may be narrower than F (padded) or wider where the extra columns are padding.
        With ``check_ranks`` (default: whenever torch.distributed is initialised) every rank of
        ``group`` must call ``update`` together: the ranks exchange whether they accepted the plan
        and its digest, and nobody writes unless all accepted the same table
        (:class:`~torchair_plugin.eplb.RankMismatchError` otherwise, on every rank). On any error
        the table is left as it was. Returns True when the values changed.
        """
        import torch.distributed as dist

        if check_ranks is None:
            check_ranks = dist.is_available() and dist.is_initialized()
        try:
            table = self.prepare(new)
        except ValueError:
            if check_ranks:
                # Tell the others first: a rank that raised alone would leave them in the gather.
                try:
                    agree(False, "", group=group, device=self._tensor.device)
                except RankMismatchError:
                    pass  # this rank's own error says more than "some rank refused"
            raise
        if check_ranks:
            agree(True, table_digest(table), group=group, device=self._tensor.device)
        changed = not torch.equal(table, self._tensor.cpu())
        self._tensor.copy_(table)
        self.version += 1
        return changed
