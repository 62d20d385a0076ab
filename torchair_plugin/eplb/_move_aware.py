"""Move-aware replanning: from the slots replicas are in now, change as few as keep each layer's
balancedness within a bound of a from-scratch plan. Every moved replica is a weight copy
between devices, so a plan that moves few is worth a little balance.

Per layer, the cheapest of (in moves) whichever reach the bound:
1. the current slots, unchanged;
2. a greedy descent from them: each step the move that lowers the heaviest rank most per slot
   rewritten: a spare replica of a light expert rewritten as one more replica of an expert of the
   heaviest rank, one on the heaviest rank rewritten as a light expert, or two slots exchanged;
3. the from-scratch plan with its ranks matched to the current ones (most experts in common
   first) and experts kept in the slot they are in: a relabelling, so the same balance;
4. the from-scratch plan as it is.
All layers step together; a layer stops when it reaches the bound or no move helps.
"""

from __future__ import annotations

import numpy as np

from torchair_plugin.eplb import _layer_packing as packing

_DONORS = 6
_MAX_STEPS = 60
_FREE_SWAP_ROUNDS = 8
_RELEASE_STEPS = 24
_RELEASED = 2
_FEWER_MOVES_STEPS = 40
_IMPROVES = 1 - 1e-9


def _held(layout: packing.Layout) -> np.ndarray:
    """(L, E, R) whether rank r holds expert e."""
    num_layers, num_ranks, _ = layout.slot_expert.shape
    held = np.zeros((num_layers, layout.load.shape[1], num_ranks), dtype=bool)
    held[layout.rows[:, None, None], layout.slot_expert, layout.slot_rank] = True
    return held


def _max_without_each(values: np.ndarray) -> np.ndarray:
    """(..., R): for every r, the max over the last axis of ``values`` leaving out entry r."""
    if values.shape[-1] == 1:
        return np.full(values.shape, -np.inf)
    first = values.argmax(-1)[..., None]
    top = np.partition(values, -2, axis=-1)
    return np.where(np.arange(values.shape[-1]) == first, top[..., -2:-1], top[..., -1:])


def _grow_and_shrink(layout: packing.Layout, max_count: int):
    """(L, E) change of every replica's share when the expert gains one (``shrink`` <= 0) or loses
    one (``grow`` >= 0) replica, under the even split the search assumes."""
    load, counts = layout.load, layout.counts
    shrink = np.where(counts < max_count, load / (counts + 1) - load / counts, np.nan)
    grow = np.where(counts > 1, load / np.maximum(counts - 1, 1) - load / counts, np.nan)
    return shrink, grow


def _best_rewrite(layout: packing.Layout, held: np.ndarray, max_count: int, active: np.ndarray):
    """Per layer, the best single-slot rewrite of a donor's replica (an expert with spare ones)
    elsewhere into one more replica of an expert on the heaviest rank. Returns (peak after,
    rank, slot, new expert)."""
    rows = layout.rows
    num_layers, num_ranks, slots = layout.slot_expert.shape
    load, counts, loads = layout.load, layout.counts, layout.loads
    shrink, grow = _grow_and_shrink(layout, max_count)
    h = loads.argmax(1)
    heavy = layout.slot_expert[rows, h]  # (L, S) candidates to gain a replica
    # Donors: the experts whose shares grow least when they lose a replica.
    penalty = np.where(np.isnan(grow), np.inf, load / np.maximum(counts - 1, 1))
    donors = np.argsort(penalty, axis=1, kind="stable")[:, :_DONORS]  # (L, K)
    held_e = np.take_along_axis(held, heavy[:, :, None], 1)  # (L, S, R)
    held_f = np.take_along_axis(held, donors[:, :, None], 1)  # (L, K, R)
    d_e = np.nan_to_num(np.take_along_axis(shrink, heavy, 1))[:, :, None, None] * held_e[:, :, None, :]
    d_f = np.take_along_axis(np.nan_to_num(grow), donors, 1)[:, None, :, None] * held_f[:, None, :, :]
    base = loads[:, None, None, :] + d_e + d_f  # (L, S, K, R)
    # At the rewritten rank r: the donor's replica leaves, the new replica of e arrives.
    share_f = np.take_along_axis(load / counts, donors, 1)[:, None, :, None]
    share_e = np.take_along_axis(load / (counts + 1), heavy, 1)[:, :, None, None]
    at_r = loads[:, None, None, :] - share_f + share_e
    after = np.maximum(_max_without_each(base), at_r)
    ok = held_f[:, None, :, :] & ~held_e[:, :, None, :]
    ok &= ~np.isnan(np.take_along_axis(shrink, heavy, 1))[:, :, None, None]
    ok &= ~np.isnan(np.take_along_axis(grow, donors, 1))[:, None, :, None]
    ok &= heavy[:, :, None, None] != donors[:, None, :, None]
    # The donor's slot on r must not be a pin; nodes must keep their caps.
    slot_of = np.argmax(layout.slot_expert[:, None, :, :] == donors[:, :, None, None], 3)  # (L, K, R)
    fixed = np.take_along_axis(layout.fixed[:, None], slot_of[..., None], 3)[..., 0]
    ok &= ~fixed[:, None]
    if layout.constraints.num_nodes > 1:
        node = layout.constraints.node
        caps = -(-(counts + 1) // layout.constraints.num_nodes)
        on = np.take_along_axis(layout.on_node, heavy[:, :, None], 1)[:, :, node]  # (L, S, R)
        ok &= (on < np.take_along_axis(caps, heavy, 1)[:, :, None])[:, :, None, :]
    after = np.where(ok & active[:, None, None, None], after, np.inf).reshape(num_layers, -1)
    best = after.argmin(1)
    i, rest = np.divmod(best, donors.shape[1] * num_ranks)
    k, r = np.divmod(rest, num_ranks)
    return after[rows, best], r, slot_of[rows, k, r], heavy[rows, i]


def _best_on_heaviest(layout: packing.Layout, held: np.ndarray, max_count: int, active: np.ndarray):
    """Per layer, the best rewrite of a replica on the heaviest rank (of an expert with spare
    ones) into the lightest-share expert the rank does not hold. Returns as ``_best_rewrite``."""
    rows = layout.rows
    load, counts, loads = layout.load, layout.counts, layout.loads
    shrink, grow = _grow_and_shrink(layout, max_count)
    h = loads.argmax(1)
    on_h = layout.slot_expert[rows, h]  # (L, S)
    light_share = np.where(held[rows, :, h] | np.isnan(shrink), np.inf, load / (counts + 1))
    if layout.constraints.num_nodes > 1:
        node = layout.constraints.node[h]
        caps = -(-(counts + 1) // layout.constraints.num_nodes)
        light_share = np.where(layout.on_node[rows, :, node] < caps, light_share, np.inf)
    e = light_share.argmin(1)
    held_e = held[rows, e]  # (L, R)
    held_f = np.take_along_axis(held, on_h[:, :, None], 1)  # (L, S, R)
    new = loads[:, None, :] + np.nan_to_num(shrink[rows, e])[:, None, None] * held_e[:, None, :]
    new = new + np.nan_to_num(np.take_along_axis(grow, on_h, 1))[:, :, None] * held_f
    at_h = loads[rows, h][:, None] - np.take_along_axis(load / counts, on_h, 1) + light_share[rows, e][:, None]
    new[rows[:, None], np.arange(on_h.shape[1])[None, :], h[:, None]] = at_h
    after = new.max(2)
    ok = (
        ~np.isnan(np.take_along_axis(grow, on_h, 1))
        & ~layout.fixed[rows, h]
        & np.isfinite(light_share[rows, e])[:, None]
    )
    after = np.where(ok & active[:, None], after, np.inf)
    s = after.argmin(1)
    return after[rows, s], h, s, e


def _descend(layout: packing.Layout, target_peak: np.ndarray, max_count: int) -> None:
    """Greedy moves, all layers in step, until each layer reaches ``target_peak`` or stalls."""
    rows = layout.rows
    active = layout.peak > target_peak
    for _ in range(_MAX_STEPS):
        if not active.any():
            return
        held = _held(layout)
        peak = layout.peak
        rewrite = _best_rewrite(layout, held, max_count, active)
        on_heaviest = _best_on_heaviest(layout, held, max_count, active)
        gain_rewrite = np.maximum(peak - rewrite[0], peak - on_heaviest[0])
        use_first = rewrite[0] <= on_heaviest[0]
        value = np.where(use_first, rewrite[0], on_heaviest[0])
        r = np.where(use_first, rewrite[1], on_heaviest[1])
        s = np.where(use_first, rewrite[2], on_heaviest[2])
        e = np.where(use_first, rewrite[3], on_heaviest[3])
        before = layout.snapshot()
        counts_before, caps_before = layout.counts.copy(), layout.caps.copy()
        # An exchange costs two slots: it wins only when it gains more than twice as much.
        swapped = packing.best_with_heaviest(layout, active)
        layout.rescore()
        gain_swap = np.where(swapped, peak - layout.peak, 0.0)
        use_swap = swapped & (gain_swap > 2 * np.maximum(gain_rewrite, 0)) & (gain_swap > 0)
        undo_swap = np.nonzero(swapped & ~use_swap)[0]
        if undo_swap.size:
            layout.restore(before, undo_swap)
        use_rewrite = active & ~use_swap & np.isfinite(value) & (value < peak * _IMPROVES)
        layers = rows[use_rewrite]
        if layers.size:
            old = layout.slot_expert[layers, r[layers], s[layers]]
            layout.slot_expert[layers, r[layers], s[layers]] = e[layers]
            layout.counts[layers, old] -= 1
            layout.counts[layers, e[layers]] += 1
            layout.caps = -(-layout.counts // layout.constraints.num_nodes)
            layout.rescore(force=True)
        # The exact split (balance_mode 0's rank order) may disagree with the even model: undo.
        worse = (use_rewrite | use_swap) & (layout.peak >= peak * _IMPROVES)
        if worse.any():
            undo = np.nonzero(worse)[0]
            layout.restore(before, undo)
            layout.counts[undo], layout.caps[undo] = counts_before[undo], caps_before[undo]
            layout.rescore(force=True)
        active &= (use_rewrite | use_swap) & ~worse & (layout.peak > target_peak)


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


def _repacked(problem, prior: packing.Layout, counts: np.ndarray, target_peak: np.ndarray) -> packing.Layout:
    """The prior slots with the replica counts changed to ``counts`` (L, E): an expert with fewer
    replicas gives up those on the heaviest ranks (never its pin), the freed slots take the new
    replicas heaviest first onto the lightest ranks, and exchanges among slots that change anyway
    balance them. While a layer is above ``target_peak``, a few more slots are let go: the largest
    replicas of its heaviest rank and the smallest of its lightest, then exchanges again."""
    num_layers, num_ranks, slots = prior.slot_expert.shape
    expert = prior.slot_expert.reshape(num_layers, -1)
    weight = np.repeat(prior.loads, slots, axis=1)
    weight = np.where(prior.fixed.reshape(num_layers, -1), -np.inf, weight)
    order = np.lexsort((-weight, expert), axis=-1)
    sorted_expert = np.take_along_axis(expert, order, 1)
    starts = np.cumsum(prior.counts, 1) - prior.counts
    position = np.arange(expert.shape[1])[None, :] - np.take_along_axis(starts, sorted_expert, 1)
    drop = np.maximum(prior.counts - counts, 0)
    keep = np.empty(expert.shape, dtype=bool)
    np.put_along_axis(keep, order, position >= np.take_along_axis(drop, sorted_expert, 1), 1)
    keep = keep.reshape(prior.slot_expert.shape)
    layout = packing.place(
        counts, problem.load, problem.weights, problem.constraints, np.where(keep, prior.slot_expert, -1)
    )
    pins = layout.fixed
    layout.fixed = pins | keep
    if not layout.valid().all():
        packing.repair(layout)
    packing.improve_by_swaps(layout, _FREE_SWAP_ROUNDS)
    rows = layout.rows
    for _ in range(_RELEASE_STEPS):
        above = layout.peak > target_peak
        if not above.any():
            break
        for rank, sign in ((layout.loads.argmax(1), 1), (layout.loads.argmin(1), -1)):
            size = np.where(layout.fixed[rows, rank] & ~pins[rows, rank], sign * layout.size[rows, rank], -np.inf)
            chosen = np.argsort(-size, axis=1, kind="stable")[:, :_RELEASED]
            release = np.take_along_axis(np.isfinite(size), chosen, 1) & above[:, None]
            layers, j = np.nonzero(release)
            layout.fixed[layers, rank[layers], chosen[layers, j]] = False
        packing.improve_by_swaps(layout, _FREE_SWAP_ROUNDS, good_enough=target_peak)
    layout.fixed = pins
    return layout


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
    max_count = problem.weights.shape[1]

    def make(slots):
        return packing.Layout(slots.reshape(shape), problem.load, problem.weights, problem.constraints)

    mean = problem.load.sum(1) / problem.num_ranks
    target_peak = mean / np.maximum(target, 1e-12)
    scratch, current = make(scratch_phy2log), make(prior)
    descent = make(prior)
    _descend(descent, target_peak, max_count)
    repacked = _repacked(problem, current, scratch.counts, target_peak)
    matched = make(_matched(scratch.slot_expert, prior.reshape(shape)))
    for layout in (matched, repacked):
        _fewer_moves(layout, prior.reshape(shape), target_peak)
    candidates = [current, descent, repacked, matched, scratch]
    best_moves = np.full(num_layers, np.iinfo(np.int64).max)
    chosen = scratch.slot_expert.copy()
    loads = scratch.loads.copy()
    for layout in candidates:
        moves = (layout.slot_expert.reshape(num_layers, -1) != prior).sum(1)
        ok = layout.valid() & (layout.peak <= target_peak * (1 + 1e-9)) & (moves < best_moves)
        best_moves = np.where(ok, moves, best_moves)
        chosen[ok], loads[ok] = layout.slot_expert[ok], layout.loads[ok]
    return chosen.reshape(num_layers, -1), loads
