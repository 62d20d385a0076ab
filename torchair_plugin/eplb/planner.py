"""Plan a placement: from per-expert load to replica counts, slots on ranks and an eplb_table.

The planner models how the op really splits a logical expert's tokens over its replicas
(docs/op.md):
- balance_mode 1 splits by token row: each of ``count`` replicas gets load / count;
- balance_mode 0 sends every token of a source rank to one replica, source ranks grouped
  contiguously, ``ceil(world_size / count)`` per replica: replica k gets the load of source ranks
  [k*g, (k+1)*g). Shares are uneven when count does not divide world_size, and replicas past the
  last group get nothing.

Algorithm (deterministic: stable sorts, ties to the lowest index):
1. replica counts: each spare slot goes to the expert whose largest replica share is largest;
2. packing: replicas heaviest first onto the least-loaded rank with a free slot, then pairwise
   swaps between the heaviest rank and any other while they lower the heaviest;
3. local search over counts: choosing counts without regard to packing leaves ranks holding two
   heavy replicas, so move one replica from an expert that can spare it to a heavy expert on the
   heaviest rank, repack, and keep the move while the heaviest rank gets lighter.
4. bound search, for loads where one expert dominates: steps 1 and 3 spread it over so many thin
   replicas that every rank holding one is nearly full, and single moves cannot undo that. Bisect
   on the heaviest rank's load R instead: give each expert the fewest replicas whose shares are
   all <= R, the spare slots to the experts with the smallest shares (fillers), pack as in
   step 2, and lower R while the packing reaches it; the lightest packing seen, refined by step
   3, replaces the plan when it is lighter.
The table lists an expert's replicas in ascending physical id (the rule of every builder, see
``tables``), i.e. in rank order, and mode 0 gives the k-th listed replica the k-th group's share:
every packing moves an expert's shares onto its ranks in that order before it is scored.
Step 2 alone is close to the common greedy (DeepSeek EPLB's global policy: counts and packing as
if every replica got load / count); that greedy, scored with the mode's real shares, is the last
candidate, and steps 3 and 4 only accept improvements, so the plan is never worse than it.
Counts stay within [1, min(num_ranks, F - 1)] (F = ``num_columns`` when it is fixed).
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from torchair_plugin import limits
from torchair_plugin.eplb._arrays import load_array, positive_int
from torchair_plugin.eplb.tables import table_from_phy2log
from torchair_plugin.validate import validate_eplb_table

# Local-search breadth: heavy experts tried per round x donor experts tried per heavy expert.
_HEAVY_CANDIDATES = 2
_DONOR_CANDIDATES = 4
_MAX_ROUNDS = 200
_MAX_SWAPS = 1000
_BISECTIONS = 30
_ORDER_ROUNDS = 4


def balancedness(rank_loads) -> float:
    """Mean rank load / max rank load (1.0 is perfect; 1.0 when there is no load at all)."""
    loads = np.asarray(rank_loads, dtype=np.float64)
    peak = loads.max()
    # Divided before averaging: the sum of loads near the float64 maximum overflows to inf.
    return float((loads / peak).mean()) if peak > 0 else 1.0


def per_source_load(load, world_size: int) -> np.ndarray:
    """Load as (world_size, E) tokens per (source rank, logical expert).

    ``load`` is (E,) — total per expert, assumed spread evenly over source ranks — or
    (world_size, E) measured per source rank (what decides balance_mode 0's shares).
    """
    array = load_array("load", load, (1, 2))
    if array.ndim == 1:
        return np.broadcast_to(array / world_size, (world_size, array.shape[0]))
    if array.shape[0] != world_size:
        raise ValueError(f"load of shape (source ranks, experts) must have {world_size} rows, got {array.shape}")
    return array


def replica_shares(source_load: np.ndarray, count: int, balance_mode: int) -> np.ndarray:
    """Load of each of an expert's ``count`` replicas, in table order, given its load per source
    rank (world_size,), as the op splits it."""
    if balance_mode == 1:
        return np.full(count, source_load.sum() / count)
    world_size = source_load.shape[0]
    group = -(-world_size // count)
    starts = np.arange(count) * group
    used = starts < world_size  # replicas past the last group receive nothing
    shares = np.zeros(count)
    shares[used] = np.add.reduceat(source_load, starts[used])
    return shares


def expected_loads(eplb_table: torch.Tensor, load, world_size: int, balance_mode: int) -> np.ndarray:
    """Modelled tokens per physical expert (P,) for a table and a load (see per_source_load)."""
    _check_mode(balance_mode)
    total = validate_eplb_table(eplb_table, world_size, balance_mode=balance_mode)
    table = eplb_table.cpu().numpy()
    source = per_source_load(load, world_size)
    if source.shape[1] != table.shape[0]:
        raise ValueError(f"load has {source.shape[1]} experts but eplb_table has {table.shape[0]} rows")
    physical = np.zeros(total)
    for expert, row in enumerate(table):
        count = int(row[0])
        physical[row[1 : 1 + count]] += replica_shares(source[:, expert], count, balance_mode)
    return physical


@dataclasses.dataclass(frozen=True)
class Placement:
    """A plan: ``eplb_table`` (int32, replicas in the order the shares were modelled), ``phy2log``
    (P,), replica ``counts`` (E,), modelled ``rank_loads`` (num_ranks,) and their balancedness."""

    eplb_table: torch.Tensor
    phy2log: np.ndarray
    counts: np.ndarray
    rank_loads: np.ndarray
    balancedness: float
    balance_mode: int


@dataclasses.dataclass
class _Packing:
    counts: np.ndarray
    expert: np.ndarray  # per replica item
    replica: np.ndarray
    size: np.ndarray
    rank: np.ndarray
    rank_loads: np.ndarray

    @property
    def peak(self) -> float:
        return float(self.rank_loads.max())


class _ShareModel:
    """Replica shares per (expert, count), memoised: the search asks for the same ones often."""

    def __init__(self, source: np.ndarray, balance_mode: int):
        self.source = source
        self.balance_mode = balance_mode
        self._cache: Dict[Tuple[int, int], np.ndarray] = {}

    def shares(self, expert: int, count: int) -> np.ndarray:
        key = (expert, count)
        if key not in self._cache:
            self._cache[key] = replica_shares(self.source[:, expert], count, self.balance_mode)
        return self._cache[key]

    def peak(self, expert: int, count: int) -> float:
        return float(self.shares(expert, count).max())


def _greedy_counts(model: _ShareModel, num_experts: int, num_slots: int, max_count: int) -> np.ndarray:
    counts = np.ones(num_experts, dtype=np.int64)
    heap = [(-model.peak(e, 1), e) for e in range(num_experts)]
    heapq.heapify(heap)
    for _ in range(num_slots - num_experts):
        while True:
            _, expert = heapq.heappop(heap)
            if counts[expert] < max_count:
                break
        counts[expert] += 1
        heapq.heappush(heap, (-model.peak(expert, int(counts[expert])), expert))
    return counts


def _peak_table(source: np.ndarray, max_count: int, balance_mode: int) -> np.ndarray:
    """Largest replica share per (expert, count): array (E, max_count), column c - 1 for count c."""
    world_size, num_experts = source.shape
    counts = np.arange(1, max_count + 1)
    if balance_mode == 1:
        return source.sum(0)[:, None] / counts[None, :]
    cumulative = np.vstack([np.zeros((1, num_experts)), np.cumsum(source, axis=0)])
    by_group: Dict[int, np.ndarray] = {}
    table = np.empty((num_experts, max_count))
    for count in counts:
        group = -(-world_size // int(count))
        if group not in by_group:
            starts = np.arange(0, world_size, group)
            ends = np.minimum(starts + group, world_size)
            by_group[group] = (cumulative[ends] - cumulative[starts]).max(0)
        table[:, count - 1] = by_group[group]
    return table


def _counts_for_bound(peaks: np.ndarray, bound: float, num_slots: int) -> Optional[np.ndarray]:
    """Fewest replicas per expert whose largest share is <= bound, the spare slots then going to
    the experts whose largest share with one more replica is smallest (near-empty fillers that
    leave the packing free); None when the bound needs more slots than there are."""
    fits = peaks <= bound
    if not fits.any(1).all():
        return None
    counts = fits.argmax(1) + 1
    spare = num_slots - int(counts.sum())
    if spare < 0:
        return None
    max_count = peaks.shape[1]
    heap = [(peaks[e, c], e) for e, c in enumerate(counts) if c < max_count]
    heapq.heapify(heap)
    for _ in range(spare):
        _, expert = heapq.heappop(heap)
        counts[expert] += 1
        if counts[expert] < max_count:
            heapq.heappush(heap, (peaks[expert, counts[expert]], expert))
    return counts


def _bound_search(model: _ShareModel, peaks: np.ndarray, best: _Packing, num_ranks: int, slots_per_rank: int):
    """Bisect on the heaviest rank's load R: replicas no larger than R, packed; R is reached when
    the packing's heaviest rank is <= R. Returns the lightest packing seen (or ``best``)."""
    num_slots = num_ranks * slots_per_rank
    low, high = float(best.rank_loads.mean()), best.peak
    for _ in range(_BISECTIONS):
        if high <= low * (1 + 1e-9):
            break
        bound = 0.5 * (low + high)
        counts = _counts_for_bound(peaks, bound, num_slots)
        if counts is None:
            low = bound
            continue
        trial = _pack(model, counts, num_ranks, slots_per_rank)
        if trial.peak < best.peak:
            best = trial
        if trial.peak <= bound:
            high = trial.peak
        else:
            low = bound
    return best


def _swap_down(packing: _Packing) -> None:
    """Swap a replica of the heaviest rank with one elsewhere while that lowers the heaviest."""
    size, rank, loads = packing.size, packing.rank, packing.rank_loads
    for _ in range(_MAX_SWAPS):
        heaviest = int(loads.argmax())
        top = loads[heaviest]
        mine = np.flatnonzero(rank == heaviest)
        others = np.flatnonzero(rank != heaviest)
        if not others.size:  # one rank: nothing to swap with
            return
        delta = size[others][None, :] - size[mine][:, None]  # what the heaviest rank gains
        after = np.maximum(top + delta, loads[rank[others]][None, :] - delta)
        best = int(after.argmin())
        if after.flat[best] >= top * (1 - 1e-12):
            return
        i, j = divmod(best, others.shape[0])
        a, b = mine[i], others[j]
        loads[heaviest] += delta[i, j]
        loads[rank[b]] -= delta[i, j]
        rank[a], rank[b] = rank[b], heaviest


def _place(model: _ShareModel, counts: np.ndarray, num_ranks: int, slots_per_rank: int) -> _Packing:
    """Replicas heaviest first onto the least-loaded rank with a free slot."""
    expert = np.repeat(np.arange(counts.shape[0]), counts)
    replica = np.arange(expert.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
    size = np.concatenate([model.shares(e, int(c)) for e, c in enumerate(counts)])
    rank = np.empty(expert.shape[0], dtype=np.int64)
    loads = np.zeros(num_ranks)
    free = np.full(num_ranks, slots_per_rank)
    open_ranks = [(0.0, r) for r in range(num_ranks)]
    for item in np.argsort(-size, kind="stable"):
        _, r = heapq.heappop(open_ranks)
        rank[item] = r
        loads[r] += size[item]
        free[r] -= 1
        if free[r]:
            heapq.heappush(open_ranks, (loads[r], r))
    return _Packing(counts, expert, replica, size, rank, loads)


def _pack(model: _ShareModel, counts: np.ndarray, num_ranks: int, slots_per_rank: int) -> _Packing:
    packing = _place(model, counts, num_ranks, slots_per_rank)
    # Swaps ignore the rank order of shares and the reorder can undo a swap's gain: alternate
    # while the heaviest rank gets lighter (mode 1's equal shares settle in one round).
    best = None
    for _ in range(_ORDER_ROUNDS):
        _swap_down(packing)
        _shares_in_rank_order(packing)
        if best is not None and packing.peak >= best.peak * (1 - 1e-12):
            break
        best = dataclasses.replace(packing, rank=packing.rank.copy(), rank_loads=packing.rank_loads.copy())
    assert best is not None  # the first round always keeps its packing
    return best


def _common_greedy(model: _ShareModel, num_ranks: int, slots_per_rank: int, max_count: int) -> _Packing:
    """DeepSeek EPLB's global policy: counts and placement as if every replica got load / count,
    then scored with the mode's real shares, in rank order. The plan never loses to it."""
    even = _ShareModel(model.source, 1)
    counts = _greedy_counts(even, model.source.shape[1], num_ranks * slots_per_rank, max_count)
    packing = _place(even, counts, num_ranks, slots_per_rank)
    packing.size = np.concatenate([model.shares(e, int(c)) for e, c in enumerate(counts)])
    _shares_in_rank_order(packing)
    return packing


def _shares_in_rank_order(packing: _Packing) -> None:
    """Give each expert's k-th replica (share) its k-th lowest rank: the table lists replicas in
    ascending physical id, and physical ids ascend with the rank. Items are in (expert, replica)
    order, so sorting the ranks within each expert's block is the whole move."""
    packing.rank = packing.rank[np.lexsort((packing.rank, packing.expert))]
    packing.rank_loads = np.bincount(packing.rank, weights=packing.size, minlength=packing.rank_loads.shape[0])


def _improve_counts(model: _ShareModel, packing: _Packing, num_ranks: int, slots_per_rank: int, max_count: int):
    """The best single replica move (donor -> heavy expert on the heaviest rank), or None."""
    counts = packing.counts
    heaviest = int(packing.rank_loads.argmax())
    mine = np.flatnonzero(packing.rank == heaviest)
    heavy = [int(packing.expert[i]) for i in mine[np.argsort(-packing.size[mine], kind="stable")]]
    heavy = [e for e in dict.fromkeys(heavy) if counts[e] < max_count][:_HEAVY_CANDIDATES]
    donors = np.flatnonzero(counts > 1)
    cost = np.array([model.peak(int(f), int(counts[f]) - 1) for f in donors])
    donors = donors[np.argsort(cost, kind="stable")]
    best = None
    for e in heavy:
        for f in [int(f) for f in donors if f != e][:_DONOR_CANDIDATES]:
            trial_counts = counts.copy()
            trial_counts[e] += 1
            trial_counts[f] -= 1
            trial = _pack(model, trial_counts, num_ranks, slots_per_rank)
            if best is None or trial.peak < best.peak:
                best = trial
    return best


def _local_search(model: _ShareModel, packing: _Packing, num_ranks: int, slots_per_rank: int, max_count: int):
    """Single replica moves (see _improve_counts) while the heaviest rank gets lighter."""
    for _ in range(_MAX_ROUNDS):
        trial = _improve_counts(model, packing, num_ranks, slots_per_rank, max_count)
        if trial is None or trial.peak >= packing.peak * (1 - 1e-12):
            break
        packing = trial
    return packing


def _check_mode(balance_mode: int) -> None:
    if isinstance(balance_mode, bool) or balance_mode not in limits.BALANCE_MODES:  # True == 1
        raise ValueError(f"balance_mode must be 0 or 1, got {balance_mode!r}")


def check_slots(num_experts: int, num_ranks: int, slots_per_rank: int, balance_mode: int) -> None:
    """Every expert needs a slot, and has at most num_ranks replicas; mode 0 needs 2 ranks."""
    num_slots = num_ranks * slots_per_rank
    if balance_mode == 0 and num_ranks < limits.MIN_WORLD_SIZE:
        raise ValueError(f"balance_mode 0 needs num_ranks (world_size) >= {limits.MIN_WORLD_SIZE}, got {num_ranks}")
    if not num_experts <= num_slots <= min(limits.MAX_EXPERTS, num_experts * num_ranks):
        raise ValueError(
            f"num_ranks * slots_per_rank = {num_slots} physical experts must be in [experts = {num_experts}, "
            f"min({limits.MAX_EXPERTS}, experts * num_ranks = {num_experts * num_ranks})] (each expert has "
            f"1..num_ranks replicas)"
        )


def plan_placement(
    load, num_ranks: int, slots_per_rank: int, *, balance_mode: int = 1, num_columns: Optional[int] = None
) -> Placement:
    """Choose replica counts and their slots so that every rank holds ``slots_per_rank`` slots and
    the heaviest rank is as light as possible, for the op's split in ``balance_mode``.

    ``load``: tokens per logical expert (E,), or per (source rank, expert) (num_ranks, E), which
    balance_mode 0 needs for exact shares. ``num_columns`` fixes the table's F (see tables).
    Physical expert p lives on rank p // slots_per_rank (the dispatch convention).
    """
    # Every rank holds at least one of at most 1024 physical experts: this bounds both, before
    # anything is sized by them.
    num_ranks = positive_int("num_ranks", num_ranks, limits.MAX_EXPERTS)
    slots_per_rank = positive_int("slots_per_rank", slots_per_rank, limits.MAX_EXPERTS)
    _check_mode(balance_mode)
    source = per_source_load(load, num_ranks)
    num_experts, num_slots = source.shape[1], num_ranks * slots_per_rank
    check_slots(num_experts, num_ranks, slots_per_rank, balance_mode)
    # Planned in units of the largest load: a plan does not depend on the scale, and sums of loads
    # near the float64 maximum would overflow to inf.
    scale = float(source.max()) or 1.0
    source = source / scale

    # A row holds at most F - 1 replicas: a fixed F caps the counts (an invalid F is reported by tables).
    max_count = num_ranks
    if (
        isinstance(num_columns, (int, np.integer))
        and not isinstance(num_columns, bool)
        and 2 <= num_columns <= num_ranks + 1
    ):
        max_count = num_columns - 1
        if num_slots > num_experts * max_count:
            raise ValueError(
                f"num_ranks * slots_per_rank = {num_slots} physical experts need more than num_columns - 1 = "
                f"{max_count} replicas for some of the {num_experts} experts"
            )

    model = _ShareModel(source, balance_mode)
    packing = _pack(model, _greedy_counts(model, num_experts, num_slots, max_count), num_ranks, slots_per_rank)
    packing = _local_search(model, packing, num_ranks, slots_per_rank, max_count)
    found = _bound_search(model, _peak_table(source, max_count, balance_mode), packing, num_ranks, slots_per_rank)
    if found is not packing:
        packing = _local_search(model, found, num_ranks, slots_per_rank, max_count)
    common = _common_greedy(model, num_ranks, slots_per_rank, max_count)
    if common.peak < packing.peak:
        packing = common

    # Physical ids rank by rank; within a rank by (expert, replica), so the result is canonical
    # and every expert's replicas ascend in rank order, as their shares were modelled.
    order = np.lexsort((packing.replica, packing.expert, packing.rank))
    phy2log = packing.expert[order]
    table = table_from_phy2log(phy2log, num_ranks, num_logical=num_experts, num_columns=num_columns)
    return Placement(
        eplb_table=table,
        phy2log=phy2log,
        counts=packing.counts.copy(),
        rank_loads=packing.rank_loads * scale,
        balancedness=balancedness(packing.rank_loads),
        balance_mode=balance_mode,
    )
