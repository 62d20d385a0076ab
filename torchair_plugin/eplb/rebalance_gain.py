"""Is a rebalance worth it: balancedness now, predicted for a candidate plan, and what would move.

A rebalance costs a weight transfer per moved replica (about 2.4 GB per redundant expert per
card on large models) and a pause; it pays only when it lowers the heaviest rank of many layers.
``rebalance_gain`` turns the recorded load and two tables into numbers a serving loop can log and
a decision:

- **balancedness now**, per layer: mean / max of the tokens the EP *ranks* received (the rank
  axis: physical expert p lives on rank ``p // slots_per_rank``), from the recorded load;
- **predicted balancedness** of the candidate, per layer: the same load, regrouped per logical
  expert through the current table, split over the candidate's replicas as the op splits it in
  the balance mode (mode 1: load / count per replica; mode 0: whole source-rank groups, so per
  source rank loads give the exact shares and totals are spread evenly over the sources);
- **replicas moved**, per layer: replicas a rank must receive because it did not hold that expert
  before (weights to transfer), and **slots changed** (also counting shuffles within a rank);
- the model-wide balancedness (sum over layers of mean / sum of max: the step time is the sum of
  every layer's heaviest rank), its gain, and ``worth``: the candidate changes a slot and the
  gain reaches ``min_gain``.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import numpy as np
import torch

from torchair_plugin.eplb._arrays import load_array
from torchair_plugin.eplb.load_report import physical_ranks
from torchair_plugin.eplb.planner import replica_shares
from torchair_plugin.eplb.tables import table_to_phy2log
from torchair_plugin.validate import check_int, validate_eplb_table


def rank_loads(physical_load, world_size: int) -> np.ndarray:
    """Tokens per EP rank (..., world_size) from tokens per physical expert (..., P); P must be a
    multiple of world_size (the dispatch layout: consecutive blocks of P / world_size)."""
    load = load_array("physical_load", physical_load, (1, 2, 3))
    world_size = check_int("world_size", world_size, 1)
    if load.shape[-1] % world_size:
        raise ValueError(
            f"physical_load's last axis (P = {load.shape[-1]}) must be a multiple of world_size={world_size}"
        )
    return load.reshape(*load.shape[:-1], world_size, load.shape[-1] // world_size).sum(-1)


def balancedness_per_layer(rank_load: np.ndarray) -> np.ndarray:
    """mean / max over the last (rank) axis; 1.0 where a layer received nothing."""
    peak = rank_load.max(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = rank_load.mean(-1) / peak
    return np.where(peak > 0, ratio, 1.0)


def model_balancedness(rank_load: np.ndarray) -> float:
    """sum over layers of the mean rank load / sum of the heaviest: what the step time sees."""
    peak = float(rank_load.max(-1).sum())
    return float(rank_load.mean(-1).sum() / peak) if peak > 0 else 1.0


def _layers(table: torch.Tensor) -> np.ndarray:
    host = table.detach().cpu().numpy()
    return host if host.ndim == 3 else host[None]


def _logical_load(physical_load: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """(L, S, E) tokens per logical expert from (L, S, P) per physical expert: each expert's
    replicas summed (S: source ranks, or 1 for totals)."""
    layers, sources, _ = physical_load.shape
    result = np.zeros((layers, sources, tables.shape[1]))
    for layer, table in enumerate(tables):
        counts = table[:, 0]
        in_row = np.arange(1, table.shape[1]) <= counts[:, None]
        experts = np.repeat(np.arange(table.shape[0]), counts)
        physical = table[:, 1:][in_row]  # row-major: experts in order, matching ``experts``
        np.add.at(result[layer], (slice(None), experts), physical_load[layer][:, physical])  # type: ignore[arg-type]
    return result


def logical_load(physical_load, eplb_table: torch.Tensor) -> np.ndarray:
    """Tokens per logical expert from tokens per physical expert, through the table that served
    them: (..., P) -> (..., E) for an (E, F) table; (L, ..., P) -> (L, ..., E) for (L, E, F).
    What ``plan_placement`` takes, from what :class:`ExpertLoadRecorder` holds. The recorded ids
    are those of the table that served them: reset the recorder when the table changes."""
    validate_eplb_table(eplb_table, 1, balance_mode=1)  # the shape and the ids; the mode does not matter here
    tables = _layers(eplb_table)
    array = load_array("physical_load", physical_load, (1, 2, 3, 4))
    stacked = eplb_table.dim() == 3
    total = int(tables[0, :, 0].sum())
    if array.shape[-1] != total or (stacked and (array.ndim < 2 or array.shape[0] != tables.shape[0])):
        expected = f"({tables.shape[0]}, ..., {total})" if stacked else f"(..., {total})"
        raise ValueError(f"physical_load must have shape {expected} to match eplb_table, got {array.shape}")
    layered = array if stacked else array[None]
    middle = layered.shape[1:-1]
    flat = layered.reshape(layered.shape[0], -1, total)
    result = _logical_load(flat, tables).reshape(layered.shape[0], *middle, tables.shape[1])
    return result if stacked else result[0]


def predicted_rank_loads(logical: np.ndarray, tables: np.ndarray, world_size: int, balance_mode: int) -> np.ndarray:
    """(L, world_size) tokens per rank if ``tables`` served ``logical`` (L, S, E) load."""
    layers = logical.shape[0]
    total = int(tables[0, :, 0].sum())
    physical = np.zeros((layers, total))
    for layer in range(layers):
        # Totals (S = 1) are spread evenly over the sources: mode 0's shares need per-source load.
        source = (
            logical[layer] if logical.shape[1] == world_size else np.repeat(logical[layer] / world_size, world_size, 0)
        )
        for expert, row in enumerate(tables[layer]):
            count = int(row[0])
            physical[layer, row[1 : 1 + count]] += replica_shares(source[:, expert], count, balance_mode)
    return rank_loads(physical, world_size)


def moved_replicas(current: np.ndarray, candidate: np.ndarray, world_size: int, balance_mode: int):
    """Per layer: (replicas a rank receives that it did not hold, slots whose expert changes)."""
    old = table_to_phy2log(torch.from_numpy(current), world_size, balance_mode=balance_mode).numpy()
    new = table_to_phy2log(torch.from_numpy(candidate), world_size, balance_mode=balance_mode).numpy()
    ranks = physical_ranks(old.shape[1], world_size)
    experts = current.shape[1]
    moved = np.zeros(old.shape[0], dtype=np.int64)
    for layer in range(old.shape[0]):
        held = np.zeros((world_size, experts), dtype=np.int64)
        wanted = np.zeros((world_size, experts), dtype=np.int64)
        np.add.at(held, (ranks, old[layer]), 1)
        np.add.at(wanted, (ranks, new[layer]), 1)
        moved[layer] = np.maximum(wanted - held, 0).sum()
    return moved, (old != new).sum(1)


@dataclasses.dataclass(frozen=True)
class RebalanceGain:
    """The numbers behind a rebalance decision; arrays have one entry per layer."""

    balancedness_now: np.ndarray
    balancedness_predicted: np.ndarray
    model_balancedness_now: float
    model_balancedness_predicted: float
    replicas_moved: np.ndarray
    slots_changed: np.ndarray
    bytes_moved: Optional[int]
    min_gain: float

    @property
    def gain(self) -> float:
        return self.model_balancedness_predicted - self.model_balancedness_now

    @property
    def worth(self) -> bool:
        """The skip rule: rebalance only when the candidate changes something and the predicted
        gain reaches ``min_gain``."""
        return bool(self.slots_changed.sum()) and self.gain >= self.min_gain

    def to_dict(self) -> Dict:
        """Plain numbers and lists, ready for a log line or JSON."""
        return {
            "balancedness_now": self.balancedness_now.tolist(),
            "balancedness_predicted": self.balancedness_predicted.tolist(),
            "model_balancedness_now": self.model_balancedness_now,
            "model_balancedness_predicted": self.model_balancedness_predicted,
            "gain": self.gain,
            "min_gain": self.min_gain,
            "worth": self.worth,
            "replicas_moved": self.replicas_moved.tolist(),
            "slots_changed": self.slots_changed.tolist(),
            "bytes_moved": self.bytes_moved,
        }


def rebalance_gain(
    load,
    current: torch.Tensor,
    candidate: torch.Tensor,
    world_size: int,
    *,
    balance_mode: int,
    min_gain: float = 0.0,
    bytes_per_expert: Optional[int] = None,
) -> RebalanceGain:
    """Compare the ``current`` table, which served ``load``, with a ``candidate``.

    ``current`` and ``candidate``: valid tables for ``balance_mode``, both (E, F) or both
    (L, E, F), with the same number of physical experts P (F may differ). ``load``: tokens each
    physical expert received under ``current`` (what :class:`ExpertLoadRecorder` holds,
    all-reduced over the ranks): (P,) / (L, P) totals, or (world_size, P) / (L, world_size, P)
    per source rank, which makes mode 0's prediction exact. ``min_gain``: the smallest rise of the
    model-wide balancedness that is worth a rebalance. ``bytes_per_expert``: weight bytes of one
    expert replica, for ``bytes_moved``.
    """
    world_size = check_int("world_size", world_size, 1)
    balance_mode = check_int("balance_mode", balance_mode, 0, 1)
    if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or not -1.0 <= min_gain <= 1.0:
        raise ValueError(f"min_gain must be a number in [-1, 1] (a change of balancedness), got {min_gain!r}")
    if bytes_per_expert is not None:
        bytes_per_expert = check_int("bytes_per_expert", bytes_per_expert, 0)
    totals = []
    for name, table in (("current", current), ("candidate", candidate)):
        try:
            totals.append(validate_eplb_table(table, world_size, balance_mode=balance_mode))
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    if current.dim() != candidate.dim() or current.shape[:-1] != candidate.shape[:-1] or totals[0] != totals[1]:
        raise ValueError(
            f"current and candidate must have the same layers, logical experts and physical experts, got shapes "
            f"{tuple(current.shape)} and {tuple(candidate.shape)} holding {totals[0]} and {totals[1]} physical experts"
        )
    old, new = _layers(current), _layers(candidate)
    stacked = current.dim() == 3
    array = load_array("load", load, (2, 3) if stacked else (1, 2))
    per_source = array.ndim == (3 if stacked else 2)
    expected = (*((old.shape[0],) if stacked else ()), *((world_size,) if per_source else ()), totals[0])
    if array.shape != expected:
        raise ValueError(
            f"load must have shape {expected} (tokens per physical expert{', per source rank' if per_source else ''}), "
            f"got {array.shape}"
        )
    physical = array.reshape(old.shape[0], world_size if per_source else 1, totals[0])
    now = rank_loads(physical.sum(1), world_size)
    predicted = predicted_rank_loads(_logical_load(physical, old), new, world_size, balance_mode)
    moved, changed = moved_replicas(old, new, world_size, balance_mode)
    return RebalanceGain(
        balancedness_now=balancedness_per_layer(now),
        balancedness_predicted=balancedness_per_layer(predicted),
        model_balancedness_now=model_balancedness(now),
        model_balancedness_predicted=model_balancedness(predicted),
        replicas_moved=moved,
        slots_changed=changed,
        bytes_moved=None if bytes_per_expert is None else int(moved.sum()) * bytes_per_expert,
        min_gain=float(min_gain),
    )
