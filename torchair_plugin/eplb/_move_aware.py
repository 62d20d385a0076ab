"""Move-aware replanning: from the slots replicas are in now, change as few as keep each layer's
balancedness within a bound of a from-scratch plan. Every moved replica is a weight copy
between devices, so a plan that moves few is worth a little balance.

Per layer, the cheapest of (in moves) whichever reach the bound:
1. the current slots, unchanged;
2. the current slots with exchanges between the heaviest rank and another (two slots each) until
   the layer is within the bound, the exchange that is enough with fewest slots changed where
   there is one: what noisy loads need (the counts still fit, a few ranks are over);
3. the same after changing the counts first (``_recounted``), to the from-scratch plan's or to
   the nearest the bound allows (``_nearest_counts``): what a shift in which experts are hot
   needs, with noise on top;
4. the from-scratch plan with its ranks matched to the current ones (most experts in common
   first) and experts kept in the slot they are in (a relabelling, so the same balance in
   balance_mode 1), then exchanges that put replicas back where they were while the bound
   holds: what a clean shift in which experts are hot needs;
5. the from-scratch plan as it is.
All layers step together; a layer stops when it reaches the bound or no move helps.
"""

from __future__ import annotations

import numpy as np

from torchair_plugin.eplb import _layer_packing as packing

_MAX_EXCHANGES = 128
_FEWER_MOVES_STEPS = 40
# One exchange of ``_fewer_moves`` saves at most two moves: a relabelled plan further than this
# from the current slots cannot beat a candidate already found (and is the expensive one).
_MOST_SAVED = 2 * _FEWER_MOVES_STEPS


def _held(layout: packing.Layout) -> np.ndarray:
    """(L, E, R) whether rank r holds expert e."""
    num_layers, num_ranks, _ = layout.slot_expert.shape
    held = np.zeros((num_layers, layout.load.shape[1], num_ranks), dtype=bool)
    held[layout.rows[:, None, None], layout.slot_expert, layout.slot_rank] = True
    return held


def _exchange_down(layout: packing.Layout, target_peak: np.ndarray, prior: np.ndarray) -> None:
    """Exchanges of a replica on the heaviest rank with one elsewhere, all layers in step, until
    a layer is within ``target_peak`` or no exchange lowers it: each the one that lowers the
    heavier of the two most, or where some exchange is enough for both, the one of those that
    changes fewest slots against ``prior`` (L, R, S). In balance_mode 0 rank order decides the
    shares, so an exchange can make another rank heavier than estimated; the next step sees the
    exact sizes and the caller checks the bound (undoing such a step instead stopped layers a step
    later would have fixed)."""
    active = layout.peak > target_peak
    for _ in range(_MAX_EXCHANGES):
        if not active.any():
            return
        changed = packing.best_with_heaviest(layout, active, prior, target_peak)
        layout.rescore()
        active &= changed & (layout.peak > target_peak)


def _recounted(problem, current: packing.Layout, counts: np.ndarray) -> packing.Layout:
    """The current slots with the replica counts changed to ``counts`` (L, E): an expert with
    fewer replicas gives up those on the heaviest ranks (never its pin), and the freed slots take
    the new replicas, heaviest first onto the lightest ranks. The slots kept stay as they are."""
    num_layers, num_ranks, slots = current.slot_expert.shape
    expert = current.slot_expert.reshape(num_layers, -1)
    weight = np.repeat(current.loads, slots, axis=1)
    weight = np.where(current.fixed.reshape(num_layers, -1), -np.inf, weight)
    # Each expert's replicas, heaviest rank first: the first ``drop`` of them go.
    order = np.lexsort((-weight, expert), axis=-1)
    sorted_expert = np.take_along_axis(expert, order, 1)
    starts = np.cumsum(current.counts, 1) - current.counts
    position = np.arange(expert.shape[1])[None, :] - np.take_along_axis(starts, sorted_expert, 1)
    drop = np.maximum(current.counts - counts, 0)
    keep = np.empty(expert.shape, dtype=bool)
    np.put_along_axis(keep, order, position >= np.take_along_axis(drop, sorted_expert, 1), 1)
    keep = keep.reshape(current.slot_expert.shape)
    preset = np.where(keep, current.slot_expert, -1)
    layout = packing.place(counts, problem.load, problem.weights, problem.constraints, preset)
    pins = layout.fixed
    layout.fixed = pins | keep
    if not layout.valid().all():
        packing.repair(layout)
    layout.fixed = pins
    return layout


def _nearest_counts(problem, counts: np.ndarray, target_peak: np.ndarray) -> np.ndarray:
    """(L, E) the counts nearest ``counts`` whose largest shares leave a rank room within
    ``target_peak``: experts below the fewest replicas that allows gain them, and the slots
    that takes come from the replicas whose removal leaves the smallest share."""
    load, weights = problem.load, problem.weights
    max_count = weights.shape[1]
    smallest = np.sort(load, axis=1)[:, : max(1, load.shape[1] // 2)].mean(1)
    bound = np.maximum(target_peak - (problem.slots_per_rank - 1) * smallest, 0.5 * target_peak)
    fits = load[:, :, None] * weights[None, 1:, 0] <= bound[:, None, None]  # (L, E, count - 1)
    need = np.where(fits.any(2), fits.argmax(2) + 1, max_count)
    new = np.maximum(counts, need)
    excess = new.sum(1) - counts.sum(1)
    # Taking a replica from an expert at j + 1 replicas leaves shares load * w[j, 0] (j >= need).
    j = np.arange(max_count)[None, None, :]
    shares = load[:, :, None] * weights[:max_count, 0][None, None, :]
    removable = (j >= np.maximum(need, 1)[:, :, None]) & (j < new[:, :, None])
    shares = np.where(removable, shares, np.inf).reshape(load.shape[0], -1)
    order = np.argsort(shares, axis=1, kind="stable")
    take = np.arange(shares.shape[1])[None, :] < excess[:, None]
    taken = np.zeros(shares.shape, dtype=bool)
    np.put_along_axis(taken, order, take & np.isfinite(np.take_along_axis(shares, order, 1)), 1)
    return new - taken.reshape(load.shape + (max_count,)).sum(2)


def _matched(scratch: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``scratch`` (L, R, S) with its ranks relabelled to the ``prior`` ranks they share most
    experts with (greedy, largest overlap first), each expert kept in its prior slot if it stays."""
    num_layers, num_ranks, slots = scratch.shape
    rows = np.arange(num_layers)
    # (L, new rank, old rank) experts in common.
    overlap = (scratch[:, :, None, :, None] == prior[:, None, :, None, :]).sum((3, 4)).astype(np.float64)
    target = np.empty((num_layers, num_ranks), dtype=np.int64)
    for _ in range(num_ranks):
        flat = overlap.reshape(num_layers, -1).argmax(1)
        new, old = np.divmod(flat, num_ranks)
        target[rows, new] = old
        overlap[rows, new, :] = -1
        overlap[rows, :, old] = -1
    moved = np.empty_like(scratch)
    moved[rows[:, None], target] = scratch
    # Within a rank: experts that stay keep their slot; the others fill the freed slots.
    keep = packing.on_rank(prior, moved[:, :, None, :])
    arriving = ~packing.on_rank(moved, prior[:, :, None, :])
    free_slots = np.argsort(keep, axis=2, kind="stable")
    arrivals = np.argsort(~arriving, axis=2, kind="stable")
    result = prior.copy()
    use = np.arange(slots)[None, None, :] < arriving.sum(2, keepdims=True)
    layer, rank, j = np.nonzero(use)
    result[layer, rank, free_slots[layer, rank, j]] = moved[layer, rank, arrivals[layer, rank, j]]
    return result


def _fewer_moves(layout: packing.Layout, prior: np.ndarray, target_peak: np.ndarray) -> None:
    """Exchanges that put replicas back on a rank that held them before, each the one that saves
    the most moves per layer while both ranks stay within ``target_peak``; until none saves any.
    A rank's moves are the experts it holds that it did not hold in ``prior`` (L, R, S)."""
    rows = layout.rows
    num_layers, num_ranks, slots = layout.slot_expert.shape
    before = np.zeros((num_layers, layout.load.shape[1], num_ranks), dtype=bool)
    before[rows[:, None, None], prior, layout.slot_rank] = True
    flat_rank = layout.slot_rank.reshape(num_layers, -1)
    for _ in range(_FEWER_MOVES_STEPS):
        expert = layout.slot_expert.reshape(num_layers, -1)
        size = layout.size.reshape(num_layers, -1)
        arrived = ~before[rows[:, None], expert, flat_rank] & ~layout.fixed.reshape(num_layers, -1)
        width = int(arrived.sum(1).max(initial=0))
        if not width:
            return
        a = np.argsort(~arrived, axis=1, kind="stable")[:, :width]  # (L, K) slots that moved
        a_ok = np.take_along_axis(arrived, a, 1)
        xa, ra, sa = (np.take_along_axis(v, a, 1)[:, :, None] for v in (expert, flat_rank, size))
        xb, rb, sb = expert[:, None, :], flat_rank[:, None, :], size[:, None, :]
        layer = rows[:, None, None]
        # Moves saved: x leaves a rank it is new on (1), y leaves one (if new there), minus
        # whether each is new on the rank it lands on.
        new = ~before
        gain = 1 + new[layer, xb, rb].astype(np.int64) - new[layer, xb, ra] - new[layer, xa, rb]
        delta = sb - sa
        now = _held(layout)
        ok = a_ok[:, :, None] & (ra != rb) & (xa != xb) & ~layout.fixed.reshape(num_layers, -1)[:, None, :]
        ok &= ~now[layer, xa, rb] & ~now[layer, xb, ra]
        ok &= layout.node_ok(layer, xa, rb, ra) & layout.node_ok(layer, xb, ra, rb)
        ok &= np.maximum(layout.loads[layer, ra] + delta, layout.loads[layer, rb] - delta) <= target_peak[:, None, None]
        score = np.where(ok & (gain > 0), gain, 0)
        best = score.reshape(num_layers, -1).argmax(1)
        take = score.reshape(num_layers, -1)[rows, best] > 0
        if not take.any():
            return
        i, j = np.divmod(best, expert.shape[1])
        slot_a = a[rows, i]
        layers = rows[take]
        layout.exchange(layers, np.divmod(slot_a[take], slots), np.divmod(j[take], slots))
        layout.rescore()


def replan(problem, prior: np.ndarray, scratch_phy2log: np.ndarray, target: np.ndarray):
    """(phy2log (L, P), exact rank loads (L, R)): per layer the plan with fewest slots changed
    against ``prior`` (L, P) whose balancedness is >= ``target`` (L,)."""
    num_layers = prior.shape[0]
    shape = (num_layers, problem.num_ranks, problem.slots_per_rank)
    prior_slots = prior.reshape(shape)
    mean = problem.load.sum(1) / problem.num_ranks
    target_peak = mean / np.maximum(target, 1e-12)

    def make_layout(slots: np.ndarray) -> packing.Layout:
        return packing.Layout(slots, problem.load, problem.weights, problem.constraints)

    scratch = make_layout(scratch_phy2log.reshape(shape))
    chosen, loads = scratch.slot_expert.copy(), scratch.loads.copy()
    best_moves = (chosen != prior_slots).sum((1, 2))

    def offer(layout: packing.Layout, layers: np.ndarray) -> None:
        moves = (layout.slot_expert != prior_slots[layers]).sum((1, 2))
        ok = layout.valid() & (layout.peak <= target_peak[layers] * (1 + 1e-9)) & (moves < best_moves[layers])
        best_moves[layers[ok]] = moves[ok]
        chosen[layers[ok]], loads[layers[ok]] = layout.slot_expert[ok], layout.loads[ok]

    every = np.arange(num_layers)
    current = make_layout(prior_slots)
    offer(current, every)
    # Exchanges alone (noisy loads: the counts still fit), then with the counts changed first
    # to the from-scratch plan's and to the nearest counts the bound allows (hot experts moved).
    exchanged = make_layout(prior_slots)
    candidates = [exchanged]
    for counts in (scratch.counts, _nearest_counts(problem, current.counts, target_peak)):
        candidates.append(_recounted(problem, current, counts))
    for candidate in candidates:
        _exchange_down(candidate, target_peak, prior_slots)
        offer(candidate, every)
    relabelled = _matched(scratch.slot_expert, prior_slots)
    layers = np.nonzero((relabelled != prior_slots).sum((1, 2)) - _MOST_SAVED < best_moves)[0]
    if layers.size:
        sub = problem.subset(layers)
        matched = packing.Layout(relabelled[layers], sub.load, problem.weights, sub.constraints)
        _exchange_down(matched, target_peak[layers], prior_slots[layers])
        _fewer_moves(matched, prior_slots[layers], target_peak[layers])
        offer(matched, layers)
    return chosen.reshape(num_layers, -1), loads
