"""Plan every MoE layer of a model in one call: ``plan_model(loads (L, E), ...)`` -> tables (L, E, F).

The per-layer ``plan_placement`` searches one layer at a time in Python; here each step is an
array operation over all layers (see ``_layer_packing``), so a 58-layer model costs about what a
few layers cost there. Steps, for every layer at once:
1. counts by highest averages (DeepSeek EPLB's rule), packed: the baseline candidate (in
   balance_mode 0 also packed with each replica at its real share);
2. bisection on the heaviest rank's load T: the fewest replicas whose shares are all <= T, the
   spare slots as near-empty fillers, packed heaviest first, then swaps off the heaviest rank;
   the lightest packing any step found is kept, per layer;
   under a cap on the counts (``num_columns``, or the previous tables' F) the search also runs
   uncapped, and a layer takes that plan where its counts fit and it is lighter;
3. with ``previous`` tables, a move-aware replan (``_move_aware``): start from where replicas
   are and change as few slots as keep every layer within ``max_loss`` of step 2's balancedness.
Every packing keeps the rules: at most one replica of an expert per rank, at most
ceil(count / nodes) per node with ``ranks_per_node``, and a replica of a pinned expert on its rank.
Plans are scored under the op's real split for ``balance_mode`` (an expert's load spread evenly
over source ranks).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch

from torchair_plugin import limits
from torchair_plugin.eplb import _layer_packing as packing
from torchair_plugin.eplb._arrays import int_array, load_array, positive_int
from torchair_plugin.eplb._move_aware import replan
from torchair_plugin.eplb.planner import check_slots
from torchair_plugin.eplb.tables import table_from_phy2log, table_to_phy2log
from torchair_plugin.validate import check_int, max_columns

_BISECTIONS = 10
# A layer stops bisecting once its bounds are this close: the final exchanges close the last
# 1e-4 anyway (same balancedness on the benchmark's model, a third less time).
_CLOSE_ENOUGH = 1e-4
_SWAP_ROUNDS = 4
_FINAL_SWAP_ROUNDS = 60
DEFAULT_MAX_LOSS = 0.002


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """A whole-model plan. ``eplb_tables`` (L, E, F) int32; ``phy2log`` (L, P) int64 (slot p on
    rank p // slots_per_rank); ``counts`` (L, E); ``rank_loads`` (L, R) under the op's split;
    ``balancedness`` (L,) mean / max rank load; ``moved`` (L,) slots whose expert changed against
    ``previous`` (zeros without it); ``scratch_balancedness`` (L,) what a from-scratch plan gets."""

    eplb_tables: torch.Tensor
    phy2log: np.ndarray
    counts: np.ndarray
    rank_loads: np.ndarray
    balancedness: np.ndarray
    moved: np.ndarray
    scratch_balancedness: np.ndarray
    balance_mode: int

    @property
    def mean_balancedness(self) -> float:
        return float(self.balancedness.mean())


@dataclasses.dataclass
class _Problem:
    load: np.ndarray  # (L, E), each layer divided by its largest load
    num_ranks: int
    slots_per_rank: int
    weights: np.ndarray
    constraints: packing.Constraints

    def subset(self, layers: np.ndarray) -> "_Problem":
        constraints = dataclasses.replace(self.constraints, pinned=self.constraints.pinned[layers])
        return dataclasses.replace(self, load=self.load[layers], constraints=constraints)

    def pack(
        self,
        counts: np.ndarray,
        swap_rounds: int,
        with_heaviest: bool = False,
        greedy: bool = False,
        exact: bool = False,
    ):
        if greedy:
            layout = packing.place_greedy(
                counts, self.load, self.weights, self.constraints, self.num_ranks, self.slots_per_rank, exact
            )
        else:
            preset = packing.pin_preset(self.constraints, self.num_ranks, self.slots_per_rank)
            layout = packing.place(counts, self.load, self.weights, self.constraints, preset)
        if not layout.valid().all():
            packing.repair(layout)
        packing.improve_by_swaps(layout, swap_rounds, with_heaviest)
        return layout


def _keep_lighter(
    best: packing.Layout, trial: packing.Layout, allowed: np.ndarray, layers=None, force: bool = False
) -> None:
    """Per layer, ``best`` becomes ``trial`` where that is allowed and lighter (or just allowed,
    with ``force``); ``trial`` holds the ``layers`` of ``best`` (default: all)."""
    layers = best.rows if layers is None else layers
    better = allowed & (force | (trial.peak < best.peak[layers]))
    for name in packing.Layout._STATE + ("counts", "caps", "fixed"):
        if better.any() and getattr(best, name).size:
            getattr(best, name)[layers[better]] = getattr(trial, name)[better]


def _plan_scratch(problem: _Problem) -> packing.Layout:
    load, num_slots = problem.load, problem.num_ranks * problem.slots_per_rank
    max_count = problem.weights.shape[1]
    greedy_counts = packing.highest_averages(load, max_count, num_slots)
    best = problem.pack(greedy_counts, _SWAP_ROUNDS, greedy=True)
    if not packing.order_free(problem.weights):
        # balance_mode 0: the same greedy with each replica weighed at its real share. The common
        # greedy above (load / count) stays a candidate: the plan must never be below it.
        trial = problem.pack(greedy_counts, _SWAP_ROUNDS, greedy=True, exact=True)
        _keep_lighter(best, trial, trial.valid() | ~best.valid())
    # No rank is lighter than the mean, nor than an expert's share at its most replicas.
    low = np.maximum(load.sum(1) / problem.num_ranks, (load * problem.weights[max_count, 0]).max(1))
    high = best.peak.copy()
    # A rank that holds an expert's largest share also holds S - 1 other replicas, at best the
    # smallest: the shares must leave room for those, or the bound is never reached.
    smallest = np.sort(load, axis=1)[:, : max(1, load.shape[1] // 2)].mean(1)
    room = (problem.slots_per_rank - 1) * smallest
    # The bound at the mean without room: spare slots as fillers everywhere (small layers).
    counts, feasible = packing.counts_for_bound(load, low, problem.weights, num_slots)
    trial = problem.pack(counts, _SWAP_ROUNDS)
    _keep_lighter(best, trial, (feasible & trial.valid()) | ~best.valid())
    high = np.where(best.valid(), np.minimum(high, best.peak), high)
    for _ in range(_BISECTIONS):
        searching = high > low * (1 + _CLOSE_ENOUGH)
        if not searching.any():
            break
        bound = np.where(searching, 0.5 * (low + high), high)
        counts, feasible = packing.counts_for_bound(load, np.maximum(bound - room, low / 2), problem.weights, num_slots)
        # Too few slots to leave that room: the bound on shares alone (small layers need it).
        plain, plain_feasible = packing.counts_for_bound(load, bound, problem.weights, num_slots)
        counts = packing.select(feasible, counts, plain)
        feasible = feasible | plain_feasible
        trial = problem.pack(counts, _SWAP_ROUNDS)
        ok = feasible & trial.valid()
        _keep_lighter(best, trial, ok | ~best.valid())
        reached = ok & (trial.peak <= bound * (1 + 1e-12))
        high = np.where(searching & reached, np.minimum(high, trial.peak), high)
        low = np.where(searching & ~reached, bound, low)
    broken = np.nonzero(~best.valid())[0]
    if broken.size:
        _fall_back(problem, best, broken)
    packing.improve_by_swaps(best, _FINAL_SWAP_ROUNDS)
    return best


def _keep_uncapped(problem: _Problem, scratch: packing.Layout, balance_mode: int) -> None:
    """A cap on the counts (``num_columns``, or the previous tables' F) narrows the search, and
    the search without it can end in a lighter plan whose counts fit under the cap anyway (seen
    at max_loss=0: the move-aware plan then lost to a plan that fitted its own F). Per layer,
    ``scratch`` takes that plan where it fits and is lighter."""
    weights = packing.share_weights(problem.num_ranks, problem.num_ranks, balance_mode)
    try:
        free = _plan_scratch(dataclasses.replace(problem, weights=weights))
    except ValueError:  # a layer the uncapped fallbacks refuse: the capped plan stands
        return
    fits = np.nonzero(free.valid() & (free.counts.max(1) <= problem.weights.shape[1]))[0]
    if not fits.size:
        return
    # The same counts have the same shares under either cap: rescored, nothing changes. Only the
    # layers that fit: the capped shares have no row for a larger count.
    sub = problem.subset(fits)
    trial = packing.Layout(free.slot_expert[fits], sub.load, problem.weights, sub.constraints)
    _keep_lighter(scratch, trial, trial.valid(), fits)


def _even_counts(load: np.ndarray, pinned: np.ndarray, max_count: int, num_slots: int) -> np.ndarray:
    """(L, E) counts as even as the slots allow, the extra replicas to unpinned experts first
    and then the lightest: what pins and node caps leave the most room for."""
    order = np.lexsort((load, pinned >= 0), axis=-1)
    counts = np.zeros(load.shape, dtype=np.int64)
    for layer, experts in enumerate(order):
        turns = np.tile(experts, max_count)[:num_slots]
        counts[layer] = np.bincount(turns, minlength=load.shape[1])
    return counts


def _fall_back(problem: _Problem, best: packing.Layout, broken: np.ndarray) -> None:
    """Layers no packing kept within the rules: deal the replicas out (``dealt``), with the
    counts found and then with even counts, and then fill the slots choosing counts as they go
    (``filled``); a layer none fixes is refused."""
    sub = problem.subset(broken)
    num_slots = problem.num_ranks * problem.slots_per_rank
    even = _even_counts(sub.load, sub.constraints.pinned, problem.weights.shape[1], num_slots)
    for counts in (best.counts[broken], even):
        fallback = packing.dealt(
            counts, sub.load, sub.weights, sub.constraints, problem.num_ranks, problem.slots_per_rank
        )
        if not fallback.valid().all():
            packing.repair(fallback)
        fixed = fallback.valid() & ~best.valid()[broken]
        _keep_lighter(best, fallback, fixed, broken, force=True)
    still = broken[~best.valid()[broken]]
    if still.size:
        # Pins can make every count choice above infeasible (a pinned rank without the slots for
        # the replicas it must not hold twice): choose the counts while filling the slots.
        sub = problem.subset(still)
        fallback = packing.filled(sub.load, sub.weights, sub.constraints, problem.num_ranks, problem.slots_per_rank)
        _keep_lighter(best, fallback, fallback.valid(), still, force=True)
        still = still[~best.valid()[still]]
    if still.size:
        raise ValueError(
            f"layer {int(still[0])}: no placement found that keeps the pins with one replica of an "
            f"expert per rank{' and ranks_per_node' if problem.constraints.num_nodes > 1 else ''}: "
            f"pin fewer experts or give more slots_per_rank"
        )


def _balancedness(loads: np.ndarray) -> np.ndarray:
    peak = loads.max(1)
    safe = np.where(peak > 0, peak, 1.0)
    return np.where(peak > 0, (loads / safe[:, None]).mean(1), 1.0)


def _check_setup(
    load: np.ndarray, num_ranks: int, slots_per_rank: int, balance_mode: int, num_columns: Optional[int]
) -> int:
    """The most replicas an expert may have (bounded by the ranks and by F - 1)."""
    num_experts, num_slots = load.shape[1], num_ranks * slots_per_rank
    check_slots(num_experts, num_ranks, slots_per_rank, balance_mode)
    if num_columns is None:
        return num_ranks
    check_int("num_columns", num_columns, 2, max_columns(num_ranks, balance_mode))
    max_count = min(num_ranks, num_columns - 1)
    if num_slots > num_experts * max_count:
        raise ValueError(
            f"num_columns = {num_columns} allows {max_count} replicas per expert: too few for "
            f"num_ranks * slots_per_rank = {num_slots} slots over {num_experts} experts"
        )
    return max_count


def _constraints(
    num_layers: int, num_experts: int, num_ranks: int, slots_per_rank: int, ranks_per_node: Optional[int], pinned
) -> packing.Constraints:
    per_node = num_ranks if ranks_per_node is None else check_int("ranks_per_node", ranks_per_node, 1, num_ranks)
    if num_ranks % per_node:
        raise ValueError(f"ranks_per_node must divide num_ranks = {num_ranks}, got {per_node}")
    pins = np.full((num_layers, num_experts), -1, dtype=np.int64)
    if pinned is not None:
        array = int_array("pinned", pinned, (1, 2))
        if array.shape not in ((num_experts,), (num_layers, num_experts)):
            raise ValueError(
                f"pinned must have shape (E,) = ({num_experts},) or (L, E) = ({num_layers}, "
                f"{num_experts}), got {array.shape}"
            )
        bad = (array < -1) | (array >= num_ranks)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"pinned{list(where)} must be a rank in [0, {num_ranks}) or -1 (not pinned), got {array[where]}"
            )
        pins[:] = array
        per_rank = np.stack([np.bincount(row[row >= 0], minlength=num_ranks) for row in pins])
        if per_rank.max() > slots_per_rank:
            layer, rank = (int(i) for i in np.argwhere(per_rank > slots_per_rank)[0])
            raise ValueError(
                f"pinned puts {per_rank[layer, rank]} experts on rank {rank} (layer {layer}): "
                f"more than slots_per_rank = {slots_per_rank}"
            )
    node = np.arange(num_ranks) // per_node
    return packing.Constraints(node=node, num_nodes=num_ranks // per_node, pinned=pins)


def _previous_slots(
    previous, num_layers: int, num_experts: int, num_slots: int, num_ranks: int, balance_mode: int
) -> np.ndarray:
    if not isinstance(previous, torch.Tensor) or previous.dim() != 3:
        shape = tuple(previous.shape) if isinstance(previous, torch.Tensor) else type(previous).__name__
        raise ValueError(f"previous must be the (L, E, F) eplb_tables of a plan, got {shape}")
    if tuple(previous.shape[:2]) != (num_layers, num_experts):
        raise ValueError(
            f"previous must have (L, E) = ({num_layers}, {num_experts}) leading dimensions to "
            f"match loads, got {tuple(previous.shape)}"
        )
    phy2log = table_to_phy2log(previous, num_ranks, balance_mode=balance_mode).numpy()
    if phy2log.shape[1] != num_slots:
        raise ValueError(
            f"previous holds {phy2log.shape[1]} physical experts per layer, but num_ranks * "
            f"slots_per_rank = {num_slots}"
        )
    return phy2log


def plan_model(
    loads,
    *,
    num_ranks: int,
    slots_per_rank: int,
    balance_mode: int = 1,
    previous: Optional[torch.Tensor] = None,
    max_loss: float = DEFAULT_MAX_LOSS,
    num_columns: Optional[int] = None,
    ranks_per_node: Optional[int] = None,
    pinned=None,
) -> ModelPlan:
    """Plan the replicas of every layer: ``loads`` (L, E) tokens per logical expert per layer.

    Returns tables (L, E, F) with one F for all layers: ``num_columns``, else the previous
    tables' F, else the largest count + 1. With ``previous`` (L, E, F) tables, replicas stay in
    their slots unless moving them buys balance: the plan changes as few slots as keep each
    layer's balancedness within ``max_loss`` of a from-scratch plan's. ``ranks_per_node`` spreads
    an expert's replicas over nodes (at most ceil(count / nodes) on one); ``pinned`` (E,) or (L, E)
    puts a replica of expert e on rank pinned[..., e] (-1: anywhere).
    """
    load = load_array("loads", loads, (2,))
    num_layers, num_experts = load.shape
    num_ranks = positive_int("num_ranks", num_ranks, limits.MAX_EXPERTS)
    slots_per_rank = positive_int("slots_per_rank", slots_per_rank, limits.MAX_EXPERTS)
    balance_mode = check_int("balance_mode", balance_mode, 0, 1)
    if isinstance(max_loss, bool) or not isinstance(max_loss, (int, float, np.floating)) or not 0 <= max_loss <= 1:
        raise ValueError(f"max_loss must be a number in [0, 1] (balancedness), got {max_loss!r}")
    num_slots = num_ranks * slots_per_rank
    prior = None
    if previous is not None:
        prior = _previous_slots(previous, num_layers, num_experts, num_slots, num_ranks, balance_mode)
        if num_columns is None:
            num_columns = int(previous.shape[2])
    max_count = _check_setup(load, num_ranks, slots_per_rank, balance_mode, num_columns)
    constraints = _constraints(num_layers, num_experts, num_ranks, slots_per_rank, ranks_per_node, pinned)

    # Planned in units of each layer's largest load: plans do not depend on the scale, and sums of
    # loads near the float64 maximum would overflow.
    scale = load.max(1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    problem = _Problem(
        load / scale, num_ranks, slots_per_rank, packing.share_weights(num_ranks, max_count, balance_mode), constraints
    )
    scratch = _plan_scratch(problem)
    if max_count < num_ranks:
        _keep_uncapped(problem, scratch, balance_mode)
    # Physical ids rank by rank, within a rank by expert: one canonical table per placement.
    phy2log = np.sort(scratch.slot_expert, axis=2).reshape(num_layers, -1)
    scratch_balancedness = _balancedness(scratch.loads)
    loads_out, moved = scratch.loads, np.zeros(num_layers, dtype=np.int64)
    if prior is not None:
        phy2log, loads_out = replan(problem, prior, phy2log, scratch_balancedness - max_loss)
        moved = (phy2log != prior).sum(1)
    tables = table_from_phy2log(
        phy2log, num_ranks, num_logical=num_experts, num_columns=num_columns, balance_mode=balance_mode
    )
    counts = tables[..., 0].numpy().astype(np.int64)
    return ModelPlan(
        eplb_tables=tables,
        phy2log=phy2log,
        counts=counts,
        rank_loads=loads_out * scale,
        balancedness=_balancedness(loads_out),
        moved=moved,
        scratch_balancedness=scratch_balancedness,
        balance_mode=balance_mode,
    )
