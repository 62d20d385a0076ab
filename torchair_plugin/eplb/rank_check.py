"""Check that every rank of a ``torch.distributed`` group holds the same eplb_table.

Each rank hashes its table on the host (SHA-256 over dtype, shape and bytes) and the group
all-gathers the digests: 40 bytes per rank whatever the table's size, instead of the table.
Ranks are grouped by digest; the ranks that do not hold rank 0's table are named in the error.
Works over any backend: gloo takes CPU tensors, device backends (HCCL, NCCL) take tensors on the
current device, which the caller passes as ``device`` (``StableEplbTable`` passes its own).

Every rank of the group must call the check (it is a collective), with the same ``group``.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

_DIGEST_WORDS = 4  # SHA-256 as four int64 words
_REFUSED = 0
_ACCEPTED = 1


class RankMismatchError(ValueError):
    """Ranks of a group hold different tables, or some refused theirs. ``groups`` maps each
    digest (hex) to the ranks holding it; ``refused`` lists the ranks whose table was invalid."""

    def __init__(self, message: str, groups: Dict[str, List[int]], refused: Sequence[int] = ()):
        super().__init__(message)
        self.groups = groups
        self.refused = list(refused)


def table_digest(table: torch.Tensor) -> str:
    """SHA-256 (hex) of a table's dtype, shape and values: equal tables, equal digests."""
    if not isinstance(table, torch.Tensor):
        raise ValueError(f"table must be a torch.Tensor, got {type(table).__name__}")
    host = table.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{host.dtype}{tuple(host.shape)}".encode())
    digest.update(host.numpy().tobytes() if host.numel() else b"")
    return digest.hexdigest()


def _group_backend_device(group, device: Optional[torch.device]) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == dist.Backend.GLOO:
        return torch.device("cpu")
    if device is None:
        raise ValueError(
            "device must be given for a group whose backend is not gloo (its collectives take device tensors)"
        )
    return torch.device(device)


def _gather(accepted: bool, digest: str, group, device) -> List[Tuple[int, str]]:
    """(verdict, digest) of every rank of ``group``, in group rank order."""
    import torch.distributed as dist

    words = np.frombuffer(bytes.fromhex(digest), dtype=np.int64) if digest else np.zeros(_DIGEST_WORDS, np.int64)
    mine = torch.tensor(
        [_ACCEPTED if accepted else _REFUSED, *words.tolist()],
        dtype=torch.int64,
        device=_group_backend_device(group, device),
    )
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine, group=group)
    verdicts = []
    for row in gathered:
        values = row.cpu().numpy()
        verdicts.append((int(values[0]), values[1:].astype(np.int64).tobytes().hex()))
    return verdicts


def _global_ranks(group, count: int) -> List[int]:
    import torch.distributed as dist

    if group is None or group is dist.group.WORLD:
        return list(range(count))
    return [dist.get_global_rank(group, r) for r in range(count)]


def agree(accepted: bool, digest: str, *, group=None, device=None, what: str = "eplb_table") -> None:
    """The collective behind :func:`check_same_table`: every rank says whether it accepted its
    table and what it holds; raise :class:`RankMismatchError` on every rank unless all accepted
    the same table. Ranks are global ranks in messages."""
    verdicts = _gather(accepted, digest, group, device)
    ranks = _global_ranks(group, len(verdicts))
    refused = [rank for rank, (verdict, _) in zip(ranks, verdicts) if verdict != _ACCEPTED]
    groups: Dict[str, List[int]] = {}
    for rank, (verdict, value) in zip(ranks, verdicts):
        if verdict == _ACCEPTED:
            groups.setdefault(value, []).append(rank)
    if refused:
        raise RankMismatchError(
            f"rank(s) {refused} refused their new {what} (their own error says why): no rank writes it", groups, refused
        )
    if len(groups) > 1:
        reference = verdicts[0][1]
        others = "; ".join(
            f"rank(s) {members} hold {value[:12]}" for value, members in groups.items() if value != reference
        )
        raise RankMismatchError(
            f"{what} differs between ranks: rank(s) {groups[reference]} hold digest {reference[:12]}, {others}", groups
        )


def check_same_table(table: torch.Tensor, *, group=None, device=None) -> str:
    """Raise :class:`RankMismatchError` naming the ranks whose ``table`` differs from rank 0's;
    return the common digest. A collective: every rank of ``group`` (default: the whole world)
    calls it. ``device``: where the group's collectives run (needed unless the backend is gloo).
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("check_same_table needs an initialised torch.distributed process group")
    digest = table_digest(table)
    agree(True, digest, group=group, device=table.device if device is None else device)
    return digest
