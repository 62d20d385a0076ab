"""The vectorised steps of the whole-model planner: every function works on all layers at once.

Shapes: L layers, E logical experts, R ranks, S slots per rank, P = R * S physical slots, N nodes.
A *layout* is ``slot_expert`` (L, R, S): the logical expert in every physical slot (slot s of
rank r is physical id r * S + s, the dispatch convention). The op's split gives an expert's k-th
replica *in rank order* the k-th share of its load (tables list replicas in ascending physical
id); ``Layout.rescore`` applies it, so sizes and rank loads are always the op's, never a model.

Loops run over slot rounds or search rounds, never over layers or experts.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

_IMPROVES = 1 - 1e-9


def share_weights(num_ranks: int, max_count: int, balance_mode: int) -> np.ndarray:
    """(max_count + 1, max_count) fraction of an expert's load its k-th replica in rank order
    receives when it has c replicas: row c, column k (row 0 unused).

    balance_mode 1 splits by token row: 1 / c each. balance_mode 0 gives replica k the source ranks
    [k * g, (k + 1) * g), g = ceil(R / c), of a load spread evenly over source ranks: the last used
    group may be short, and replicas past it get nothing."""
    weights = np.zeros((max_count + 1, max_count))
    for count in range(1, max_count + 1):
        if balance_mode == 1:
            weights[count, :count] = 1.0 / count
            continue
        group = -(-num_ranks // count)
        starts = np.arange(count) * group
        weights[count, :count] = np.clip(num_ranks - starts, 0, group) / num_ranks
    return weights


def order_free(weights: np.ndarray) -> bool:
    """Whether every count splits evenly (balance_mode 1, or counts that divide R): then a
    replica's share does not depend on its rank order."""
    count = np.arange(weights.shape[0])[:, None]
    return bool(np.all((weights == weights[:, :1]) | (np.arange(weights.shape[1])[None, :] >= count)))


@dataclasses.dataclass
class Constraints:
    """Where replicas may go: ``node`` (R,) the node of each rank; ``pinned`` (L, E) a rank that
    must hold a replica of the expert, or -1."""

    node: np.ndarray
    num_nodes: int
    pinned: np.ndarray


def on_rank(expert: np.ndarray, rank_slots: np.ndarray) -> np.ndarray:
    """Whether ``expert`` (...) is among a rank's slots ``rank_slots`` (..., S)."""
    return (expert[..., None] == rank_slots).any(-1)


class Layout:
    """A layout with what the search needs at hand: exact ``size`` (L, R, S) and rank ``loads``
    (L, R), ``counts`` (L, E), node caps (L, E) = ceil(count / N) with replicas per (expert, node)
    ``on_node`` (L, E, N) when there are nodes, and the slots no move may touch (``fixed``: pins)."""

    _STATE = ("slot_expert", "size", "loads", "on_node")

    def __init__(self, slot_expert, load, weights, constraints: Constraints):
        self.slot_expert = slot_expert.copy()
        self.load, self.weights, self.constraints = load, weights, constraints
        num_layers, num_ranks, _ = slot_expert.shape
        self.rows = np.arange(num_layers)
        self.counts = np.zeros(load.shape, dtype=np.int64)
        np.add.at(self.counts, (self.rows[:, None], slot_expert.reshape(num_layers, -1)), 1)
        self.caps = -(-self.counts // constraints.num_nodes)
        self.slot_rank = np.broadcast_to(np.arange(num_ranks)[None, :, None], slot_expert.shape)
        # Equal shares (balance_mode 1, or counts that divide R) do not depend on rank order: a
        # size then travels with its replica and nothing needs rescoring after a swap.
        self.order_free = order_free(weights)
        self.fixed = self._pin_slots()
        self.on_node = np.zeros((num_layers, 0, 0), dtype=np.int64)
        self.size = np.zeros(slot_expert.shape)
        self.rescore(force=True)

    def _pin_slots(self) -> np.ndarray:
        """(L, R, S): one slot per pinned expert, the first of its rank that holds it."""
        layers, experts = np.nonzero(self.constraints.pinned >= 0)
        ranks = self.constraints.pinned[layers, experts]
        fixed = np.zeros(self.slot_expert.shape, dtype=bool)
        hit = self.slot_expert[layers, ranks] == experts[:, None]
        held = hit.any(1)
        fixed[layers[held], ranks[held], hit[held].argmax(1)] = True
        return fixed

    def rescore(self, force: bool = False) -> None:
        """Exact sizes and loads (an expert's replicas take its shares in rank order), and the
        replicas per node."""
        num_layers, num_ranks, _ = self.slot_expert.shape
        if self.constraints.num_nodes > 1:
            self.on_node = np.zeros((num_layers, self.load.shape[1], self.constraints.num_nodes), dtype=np.int64)
            np.add.at(
                self.on_node, (self.rows[:, None, None], self.slot_expert, self.constraints.node[self.slot_rank]), 1
            )
        if self.order_free and not force:
            self.loads = self.size.sum(2)
            return
        expert = self.slot_expert.reshape(num_layers, -1)
        order = np.argsort(expert * num_ranks + self.slot_rank.reshape(num_layers, -1), axis=1, kind="stable")
        sorted_expert = np.take_along_axis(expert, order, 1)
        starts = np.cumsum(self.counts, 1) - self.counts
        position = np.arange(expert.shape[1])[None, :] - np.take_along_axis(starts, sorted_expert, 1)
        count = np.take_along_axis(self.counts, sorted_expert, 1)
        size = np.empty(expert.shape)
        np.put_along_axis(
            size, order, np.take_along_axis(self.load, sorted_expert, 1) * self.weights[count, position], 1
        )
        self.size = size.reshape(self.slot_expert.shape)
        self.loads = self.size.sum(2)

    @property
    def peak(self) -> np.ndarray:
        return self.loads.max(1)

    def node_ok(self, layer, expert, to_rank, from_rank):
        """Whether a replica of ``expert`` moving ``from_rank`` -> ``to_rank`` keeps its node cap
        (arrays broadcast together); always so with one node."""
        if self.constraints.num_nodes == 1:
            return True
        node = self.constraints.node
        stays = node[to_rank] == node[from_rank]
        return stays | (self.on_node[layer, expert, node[to_rank]] < self.caps[layer, expert])

    def violating(self) -> np.ndarray:
        """(L, R, S) slots whose expert is on the rank twice (all but the first) or over its cap
        on the node."""
        order = np.argsort(self.slot_expert, axis=2, kind="stable")
        ranked = np.take_along_axis(self.slot_expert, order, 2)
        again = np.zeros(self.slot_expert.shape, dtype=bool)
        np.put_along_axis(again, order[:, :, 1:], ranked[:, :, 1:] == ranked[:, :, :-1], 2)
        if self.constraints.num_nodes > 1:
            layer = self.rows[:, None, None]
            node = self.constraints.node[self.slot_rank]
            again |= self.on_node[layer, self.slot_expert, node] > self.caps[layer, self.slot_expert]
        return again

    def valid(self) -> np.ndarray:
        """(L,) whether every rule holds: one replica per rank, node caps, pins."""
        ok = np.asarray(~self.violating().any((1, 2)))
        layers, experts = np.nonzero(self.constraints.pinned >= 0)
        held = on_rank(experts, self.slot_expert[layers, self.constraints.pinned[layers, experts]])
        ok[layers[~held]] = False
        return ok

    def exchange(self, layers, first, second) -> None:
        """Swap the contents of two slots per listed layer (``first``/``second``: (rank, slot));
        call ``rescore`` after."""
        (ra, sa), (rb, sb) = first, second
        for name in ("slot_expert", "size"):
            array = getattr(self, name)
            a = array[layers, ra, sa]
            array[layers, ra, sa] = array[layers, rb, sb]
            array[layers, rb, sb] = a

    def snapshot(self) -> dict:
        return {name: getattr(self, name).copy() for name in self._STATE}

    def restore(self, saved: dict, layers) -> None:
        for name in self._STATE:
            if getattr(self, name).size:
                getattr(self, name)[layers] = saved[name][layers]


def items_from_counts(counts: np.ndarray) -> np.ndarray:
    """(L, P) expert of every replica, sorted by expert: expert e appears counts[l, e] times."""
    num_layers, num_experts = counts.shape
    return np.repeat(np.tile(np.arange(num_experts), num_layers), counts.ravel()).reshape(num_layers, -1)


def fill_spare(counts: np.ndarray, load: np.ndarray, weights: np.ndarray, num_slots: int) -> np.ndarray:
    """Give the slots that counts leave free to the experts whose largest share with one more
    replica is smallest, at most one each a round: near-empty replicas that fill ranks."""
    counts = counts.copy()
    max_count = weights.shape[1]
    rows = np.arange(counts.shape[0])[:, None]
    while True:
        spare = num_slots - counts.sum(1)
        if not spare.any():
            return counts
        room = counts < max_count
        nxt = np.where(room, load * weights[np.minimum(counts + 1, max_count), 0], np.inf)
        order = np.argsort(nxt, axis=1, kind="stable")
        take = np.arange(counts.shape[1])[None, :] < np.minimum(spare, room.sum(1))[:, None]
        counts[rows, order] += take


def counts_for_bound(load: np.ndarray, bound: np.ndarray, weights: np.ndarray, num_slots: int):
    """(L, E) fewest replicas whose largest share is <= bound[l], spare slots filled; and (L,)
    whether the layer has the slots for them (else all ones, filled)."""
    peaks = load[:, :, None] * weights[None, 1:, 0]  # (L, E, max_count), non-increasing in count
    fits = peaks <= bound[:, None, None] * (1 + 1e-12)
    ok = fits.any(2)
    counts = np.where(ok, fits.argmax(2) + 1, weights.shape[1])
    feasible = ok.all(1) & (counts.sum(1) <= num_slots)
    counts = np.where(feasible[:, None], counts, 1)
    return fill_spare(counts, load, weights, num_slots), feasible


def highest_averages(load: np.ndarray, max_count: int, num_slots: int) -> np.ndarray:
    """(L, E) DeepSeek EPLB's replica counts: every spare slot to the expert whose load per replica
    is highest; i.e. the P - E largest quotients load / k, k >= 2 (ties: lower expert first)."""
    num_layers, num_experts = load.shape
    spare = num_slots - num_experts
    if max_count == 1 or not spare:
        return np.ones(load.shape, dtype=np.int64)
    # The k-th replica (k >= 2) is added while the expert has k - 1: its priority is load / (k - 1).
    quotients = (load[:, :, None] / np.arange(1, max_count)[None, None, :]).reshape(num_layers, -1)
    # The spare-th largest quotient, then ties at it taken in index order (lower expert first).
    kth = -np.partition(-quotients, spare - 1, axis=1)[:, spare - 1 : spare]
    above = quotients > kth
    ties = quotients == kth
    need = spare - above.sum(1, keepdims=True)
    chosen = above | (ties & (np.cumsum(ties, 1) <= need))
    return 1 + chosen.reshape(num_layers, num_experts, -1).sum(2)


def select(where: np.ndarray, new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Per layer: ``new`` where ``where`` (L,) holds, else ``old`` (arrays with L leading)."""
    return np.where(where.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)


def pin_preset(constraints: Constraints, num_ranks: int, slots_per_rank: int) -> np.ndarray:
    """(L, R, S) the pinned experts in the first slots of their rank (in expert order), -1 elsewhere."""
    layers, experts = np.nonzero(constraints.pinned >= 0)
    ranks = constraints.pinned[layers, experts]
    preset = np.full((constraints.pinned.shape[0], num_ranks, slots_per_rank), -1, dtype=np.int64)
    key = np.lexsort((experts, ranks, layers))
    group = layers[key] * num_ranks + ranks[key]
    preset[layers[key], ranks[key], np.arange(key.size) - np.searchsorted(group, group)] = experts[key]
    return preset


def place(counts, load, weights, constraints: Constraints, preset: np.ndarray) -> Layout:
    """Fill the free slots (-1) of ``preset`` (L, R, S) with the replicas ``counts`` (L, E) still
    lack, in S rounds: in round k every rank with at least S - k free slots takes one, the heaviest
    replica left going to the lightest rank (so ranks with few free slots get the small ones).
    Rules this breaks (a second replica of an expert on a rank) are for ``repair``."""
    num_layers, num_ranks, slots = preset.shape
    rows = np.arange(num_layers)
    taken_slots = preset >= 0
    present = np.zeros(counts.shape, dtype=np.int64)
    layer_of = np.broadcast_to(rows[:, None, None], preset.shape)[taken_slots]
    np.add.at(present, (layer_of, preset[taken_slots]), 1)
    todo = counts - present
    # The replicas to place, per layer, padded to the longest list (free slots differ by layer).
    per_layer = todo.sum(1)
    flat = np.repeat(np.tile(np.arange(counts.shape[1]), num_layers), todo.ravel())
    owner = np.repeat(rows, per_layer)
    width = int(per_layer.max(initial=0))
    expert = np.full((num_layers, max(width, 1)), -1, dtype=np.int64)
    expert[owner, np.arange(flat.size) - np.repeat(np.cumsum(per_layer) - per_layer, per_layer)] = flat
    share = load / counts  # shares before rank order is known
    size = np.where(expert >= 0, share[rows[:, None], np.maximum(expert, 0)], -np.inf)
    order = np.argsort(-size, axis=1, kind="stable")

    slot_expert = preset.copy()
    loads = np.where(taken_slots, share[rows[:, None, None], np.maximum(preset, 0)], 0.0).sum(2)
    free = (~taken_slots).sum(2)
    free_at = np.argsort(taken_slots, axis=2, kind="stable")  # free slot positions first
    taken = np.zeros(num_layers, dtype=np.int64)
    columns_all = np.arange(num_ranks)[None, :]
    for k in range(slots):
        eligible = free >= slots - k
        ranks = np.argsort(np.where(eligible, loads, np.inf), axis=1, kind="stable")
        count = eligible.sum(1)
        item = np.take_along_axis(order, np.minimum(taken[:, None] + columns_all, order.shape[1] - 1), 1)
        layers, columns = np.nonzero(columns_all < count[:, None])
        r = ranks[layers, columns]
        it = item[layers, columns]
        slot_expert[layers, r, free_at[layers, r, k - (slots - free[layers, r])]] = expert[layers, it]
        loads[layers, r] += size[layers, it]
        taken += count
    return Layout(slot_expert, load, weights, constraints)


def place_greedy(
    counts, load, weights, constraints: Constraints, num_ranks: int, slots_per_rank: int, exact: bool = False
) -> Layout:
    """The common greedy's packing with the rules: replicas heaviest first (load / count; ties in
    expert order), each onto the least-loaded rank (lowest index on ties) with a free slot that
    lacks the expert and whose node is under the expert's cap. Where the greedy itself never
    doubles an expert up on a rank, this is its plan exactly, so a search that starts here never
    ends below it. One step per replica, all layers at once.

    ``exact``: replica k of an expert weighs its k-th share under the op's split instead
    (balance_mode 0: a count that does not divide R leaves a short or empty last group), so
    the packing sees the short replicas as the small items they are."""
    preset = pin_preset(constraints, num_ranks, slots_per_rank)
    num_layers, slots = counts.shape[0], slots_per_rank
    rows = np.arange(num_layers)
    expert = items_from_counts(counts)
    share = load / counts
    size = np.take_along_axis(share, expert, 1)
    first = np.cumsum(counts, 1) - counts
    if exact:
        replica = np.arange(expert.shape[1])[None, :] - np.take_along_axis(first, expert, 1)
        size = np.take_along_axis(load, expert, 1) * weights[np.take_along_axis(counts, expert, 1), replica]
    layers, pinned = np.nonzero(constraints.pinned >= 0)
    size[layers, first[layers, pinned]] = -np.inf  # in the preset already
    order = np.argsort(-size, axis=1, kind="stable")
    slot_expert = preset.copy()
    taken = preset >= 0
    loads = np.where(taken, share[rows[:, None, None], np.maximum(preset, 0)], 0.0).sum(2)
    free = slots - taken.sum(2)
    held = np.zeros((num_layers, counts.shape[1], num_ranks), dtype=bool)
    held[
        np.broadcast_to(rows[:, None, None], preset.shape)[taken],
        preset[taken],
        np.broadcast_to(np.arange(num_ranks)[None, :, None], preset.shape)[taken],
    ] = True
    caps = -(-counts // constraints.num_nodes)
    on_node = np.zeros((num_layers, counts.shape[1], constraints.num_nodes), dtype=np.int64)
    np.add.at(on_node, (layers, pinned, constraints.node[constraints.pinned[layers, pinned]]), 1)
    for step in range(order.shape[1]):
        item = order[:, step]
        todo = np.isfinite(size[rows, item])
        e = expert[rows, item]
        has_slot = free > 0
        allowed = has_slot & ~held[rows, e]
        spread = allowed & (on_node[rows, e][:, constraints.node] < caps[rows, e][:, None])
        choice = np.where(spread.any(1)[:, None], spread, np.where(allowed.any(1)[:, None], allowed, has_slot))
        r = np.where(choice, loads, np.inf).argmin(1)
        at = rows[todo]
        r, e = r[todo], e[todo]
        slot_expert[at, r, slots - free[at, r]] = e  # pins hold a rank's first slots
        loads[at, r] += size[at, item[todo]]
        free[at, r] -= 1
        held[at, e, r] = True
        on_node[at, e, constraints.node[r]] += 1
    return Layout(slot_expert, load, weights, constraints)


def dealt(counts, load, weights, constraints: Constraints, num_ranks: int, slots_per_rank: int) -> Layout:
    """A layout built to keep the rules, for layers where placing and repairing did not: pins
    first, then each expert's replicas (most replicas first) dealt to ranks taken node by node in
    turn, each to the next rank with a free slot that lacks the expert and whose node is under the
    expert's cap. Without pins this always succeeds (c <= R replicas on c consecutive turns);
    pins can leave a layer no way out, which ``valid`` then reports. One Python loop per
    replica: it runs only for the rare layers that need it."""
    num_layers = counts.shape[0]
    per_node = num_ranks // constraints.num_nodes
    turn = (np.arange(num_ranks) % constraints.num_nodes) * per_node + np.arange(num_ranks) // constraints.num_nodes
    slot_expert = pin_preset(constraints, num_ranks, slots_per_rank)
    caps = -(-counts // constraints.num_nodes)
    for layer in range(num_layers):
        slots = slot_expert[layer]
        pins = constraints.pinned[layer]
        position = 0
        for expert in np.argsort(-counts[layer], kind="stable"):
            for _ in range(counts[layer, expert] - int(pins[expert] >= 0)):
                order = turn[(position + np.arange(num_ranks)) % num_ranks]
                free = (slots[order] < 0).any(1)
                lacks = ~(slots[order] == expert).any(1)
                on_node = np.bincount(
                    constraints.node[np.nonzero((slots == expert).any(1))[0]], minlength=constraints.num_nodes
                )
                room = on_node[constraints.node[order]] < caps[layer, expert]
                for choice in (free & lacks & room, free & lacks, free):
                    if choice.any():
                        break
                step = int(choice.argmax())
                rank = order[step]
                slots[rank, int(np.argmax(slots[rank] < 0))] = expert
                position = (position + step + 1) % num_ranks
    return Layout(slot_expert, load, weights, constraints)


def filled(load, weights, constraints: Constraints, num_ranks: int, slots_per_rank: int) -> Layout:
    """A layout that keeps the rules whatever the pins leave, for layers where ``dealt`` found no
    way with the counts it was given (counts chosen without the pins can need more slots on a
    pinned rank than it has): the counts are chosen while filling (``_fill_layer``). One Python
    loop per slot: it runs only for the rare layers that need it."""
    slot_expert = pin_preset(constraints, num_ranks, slots_per_rank)
    for layer in range(load.shape[0]):
        _fill_layer(slot_expert[layer], constraints.pinned[layer], load[layer], constraints, weights.shape[1])
    return Layout(np.maximum(slot_expert, 0), load, weights, constraints)


def _fill_layer(slots: np.ndarray, pins: np.ndarray, weight: np.ndarray, constraints: Constraints, max_count: int):
    """Fill the free slots (-1) of one layer's (R, S) ``slots`` in place, pins already there:
    every unpinned expert once, heaviest first, onto the lightest rank with a free slot; then
    each free slot, lightest rank first, to the expert with the largest share (load / count)
    that the rank lacks, under its count limit and with its node under ceil((count + 1) / nodes).
    Every expert can take a free slot of a rank that lacks it, and a rank with f free slots
    lacks at least f experts (E >= S), so without nodes this always succeeds; a slot left free
    is left to ``valid`` to report (as expert 0)."""
    num_ranks, num_experts, node = slots.shape[0], weight.shape[0], constraints.node
    counts = np.bincount(slots[slots >= 0], minlength=num_experts)
    held = np.zeros((num_ranks, num_experts), dtype=bool)
    on_node = np.zeros((num_experts, constraints.num_nodes), dtype=np.int64)
    for rank, slot in zip(*np.nonzero(slots >= 0)):
        held[rank, slots[rank, slot]] = True
        on_node[slots[rank, slot], node[rank]] += 1

    def put(rank: int, expert: int) -> np.ndarray:
        """Place; return the rank loads (shares load / count) after."""
        slots[rank, int(np.argmax(slots[rank] < 0))] = expert
        held[rank, expert] = True
        on_node[expert, node[rank]] += 1
        counts[expert] += 1
        return (held * (weight / np.maximum(counts, 1))).sum(1)

    rank_load = (held * (weight / np.maximum(counts, 1))).sum(1)
    for expert in np.argsort(-weight, kind="stable"):
        if pins[expert] < 0:
            free = (slots < 0).any(1)
            rank_load = put(int(np.argmin(np.where(free, rank_load, np.inf))), int(expert))
    while (slots < 0).any():
        free = (slots < 0).any(1)
        rank = int(np.argmin(np.where(free, rank_load, np.inf)))
        caps = -(-(counts + 1) // constraints.num_nodes)
        allowed = ~held[rank] & (counts < max_count) & (on_node[:, node[rank]] < caps)
        if not allowed.any():
            return
        rank_load = put(rank, int(np.argmax(np.where(allowed, weight / np.maximum(counts, 1), -np.inf))))


def repair(layout: Layout, max_rounds: int = 256) -> None:
    """Swap away slots that break a rule, one per layer a round: each with the slot elsewhere,
    not fixed, whose exchange keeps both within the rules and leaves the lighter pair of ranks."""
    rows = layout.rows
    num_layers, num_ranks, slots = layout.slot_expert.shape
    for _ in range(max_rounds):
        bad = (layout.violating() & ~layout.fixed).reshape(num_layers, -1)
        active = bad.any(1)
        if not active.any():
            return
        r, s = np.divmod(bad.argmax(1), slots)
        e = layout.slot_expert[rows, r, s][:, None, None]
        here = r[:, None, None]
        other = layout.slot_expert
        ok = (layout.slot_rank != here) & ~layout.fixed & (other != e)
        ok &= ~on_rank(e[:, :, 0], layout.slot_expert)[:, :, None]  # e is not on the partner's rank
        ok &= ~on_rank(other, layout.slot_expert[rows, r][:, None, None, :])  # nor the partner's expert here
        ok &= layout.node_ok(rows[:, None, None], e, layout.slot_rank, here)
        ok &= layout.node_ok(rows[:, None, None], other, here, layout.slot_rank)
        delta = layout.size - layout.size[rows, r, s][:, None, None]
        cost = np.maximum(layout.loads[rows, r][:, None, None] + delta, layout.loads[:, :, None] - delta)
        cost = np.where(ok, cost, np.inf).reshape(num_layers, -1)
        partner = cost.argmin(1)
        active &= np.isfinite(cost[rows, partner])
        if not active.any():
            return
        pr, ps = np.divmod(partner, slots)
        layout.exchange(rows[active], (r[active], s[active]), (pr[active], ps[active]))
        layout.rescore()


def _pair_swaps(layout: Layout, heavy: np.ndarray, light: np.ndarray, active: np.ndarray) -> np.ndarray:
    """For each layer and each (heavy[:, i], light[:, i]) rank pair, the exchange of one slot of
    each that lowers the pair's heavier load the most while both keep the rules; applied where it
    helps. Returns (L,) whether any pair of the layer changed."""
    num_layers, _, slots = layout.slot_expert.shape
    layer = layout.rows[:, None, None, None]
    hv, lt = heavy[:, :, None, None], light[:, :, None, None]
    ea = np.take_along_axis(layout.slot_expert, heavy[:, :, None], 1)[:, :, :, None]  # (L, K, S, 1)
    eb = np.take_along_axis(layout.slot_expert, light[:, :, None], 1)[:, :, None, :]  # (L, K, 1, S)
    sa = np.take_along_axis(layout.size, heavy[:, :, None], 1)[:, :, :, None]
    sb = np.take_along_axis(layout.size, light[:, :, None], 1)[:, :, None, :]
    load_h = np.take_along_axis(layout.loads, heavy, 1)[:, :, None, None]
    load_l = np.take_along_axis(layout.loads, light, 1)[:, :, None, None]
    delta = sb - sa
    after = np.maximum(load_h + delta, load_l - delta)
    rank_a = np.take_along_axis(layout.slot_expert, heavy[:, :, None], 1)  # (L, K, S)
    rank_b = np.take_along_axis(layout.slot_expert, light[:, :, None], 1)
    ok = (ea != eb) & ~on_rank(rank_a, rank_b[:, :, None, :])[:, :, :, None]
    ok &= ~on_rank(rank_b, rank_a[:, :, None, :])[:, :, None, :]
    ok &= layout.node_ok(layer, ea, lt, hv) & layout.node_ok(layer, eb, hv, lt)
    ok &= ~np.take_along_axis(layout.fixed, heavy[:, :, None], 1)[:, :, :, None]
    ok &= ~np.take_along_axis(layout.fixed, light[:, :, None], 1)[:, :, None, :]
    after = np.where(ok, after, np.inf).reshape(num_layers, heavy.shape[1], -1)
    best = after.argmin(2)
    value = np.take_along_axis(after, best[:, :, None], 2)[:, :, 0]
    take = (value < load_h[:, :, 0, 0] * _IMPROVES) & active[:, None]
    if layout.constraints.num_nodes > 1:
        take &= _first_per_expert(ea, eb, best, slots, take)
    layers, pairs = np.nonzero(take)
    if layers.size:
        sa_index, sb_index = np.divmod(best[layers, pairs], slots)
        layout.exchange(layers, (heavy[layers, pairs], sa_index), (light[layers, pairs], sb_index))
    return take.any(1)


def _first_per_expert(ea, eb, best, slots, take):
    """(L, K) with nodes: keep one exchange per moved expert and layer a round, so that two moves
    of one expert into a node cannot pass its cap together."""
    i, j = np.divmod(best, slots)
    moved_a = np.take_along_axis(ea[:, :, :, 0], i[:, :, None], 2)[:, :, 0]
    moved_b = np.take_along_axis(eb[:, :, 0, :], j[:, :, None], 2)[:, :, 0]
    keep = take.copy()
    seen = np.zeros((take.shape[0], int(max(ea.max(), eb.max())) + 1), dtype=bool)
    for pair in range(take.shape[1]):
        rows = np.arange(take.shape[0])
        clash = seen[rows, moved_a[:, pair]] | seen[rows, moved_b[:, pair]]
        keep[:, pair] &= ~clash
        seen[rows[keep[:, pair]], moved_a[keep[:, pair], pair]] = True
        seen[rows[keep[:, pair]], moved_b[keep[:, pair], pair]] = True
    return keep


def improve_by_swaps(layout: Layout, max_rounds: int, with_heaviest: bool = True) -> None:
    """Rounds of exchanges, all layers in step, alternating: each of the R/2 heaviest ranks with
    its counterpart among the lightest (many exchanges a round), then (``with_heaviest``) the
    heaviest with any other.
    A round is undone for a layer whose heaviest rank (under the op's exact split) got heavier;
    a layer stops after two rounds in a row that change nothing."""
    num_layers, num_ranks, _ = layout.slot_expert.shape
    stalled = np.zeros(num_layers, dtype=np.int64)
    half = max(1, num_ranks // 2)
    for round_ in range(max_rounds):
        active = stalled < 2
        if not active.any() or num_ranks < 2:
            return
        before, peak = layout.snapshot(), layout.peak
        if round_ % 2 == 0 or not with_heaviest:
            ranked = np.argsort(layout.loads, axis=1, kind="stable")
            changed = _pair_swaps(layout, ranked[:, ::-1][:, :half], ranked[:, :half], active)
        else:
            changed = best_with_heaviest(layout, active)
        layout.rescore()
        worse = changed & (layout.peak > peak)
        if worse.any():
            layout.restore(before, np.nonzero(worse)[0])
        stalled = np.where(changed & ~worse, 0, stalled + 1)


def best_with_heaviest(
    layout: Layout,
    active: np.ndarray,
    prior: Optional[np.ndarray] = None,
    target_peak: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The one exchange between the heaviest rank and any other that lowers the heavier of the
    two the most (per layer). With ``prior`` (L, R, S) slots and ``target_peak`` (L,): where some
    exchange brings both ranks within the target, the one that changes fewest slots against
    ``prior`` instead (then the lowest): each slot changed is a weight copy, and the exchange
    that lowers the most is seldom the only one that is enough. Returns (L,) whether the layer
    changed."""
    num_layers, num_ranks, slots = layout.slot_expert.shape
    rows = layout.rows
    h = layout.loads.argmax(1)
    layer = rows[:, None, None, None]
    ea = layout.slot_expert[rows, h][:, :, None, None]  # (L, S, 1, 1)
    sa = layout.size[rows, h][:, :, None, None]
    eb = layout.slot_expert[:, None, :, :]  # (L, 1, R, S)
    sb = layout.size[:, None, :, :]
    rank_b = layout.slot_rank[:, None]
    hh = h[:, None, None, None]
    delta = sb - sa
    after = np.maximum(layout.loads[rows, h][:, None, None, None] + delta, layout.loads[:, None, :, None] - delta)
    mine = layout.slot_expert[rows, h]  # (L, S)
    ok = (rank_b != hh) & (ea != eb)
    ok &= ~on_rank(mine[:, :, None], layout.slot_expert[:, None, :, :])[..., None]  # a's expert on b's rank
    ok &= ~on_rank(layout.slot_expert, mine[:, None, None, :])[:, None]  # b's expert on the heaviest
    ok &= layout.node_ok(layer, ea, rank_b, hh) & layout.node_ok(layer, eb, hh, rank_b)
    ok &= ~layout.fixed[rows, h][:, :, None, None] & ~layout.fixed[:, None]
    after = np.where(ok & active[:, None, None, None], after, np.inf).reshape(num_layers, -1)
    best = after.argmin(1)
    if prior is not None and target_peak is not None:
        was_a, was_b = prior[rows, h][:, :, None, None], prior[:, None, :, :]
        # Slots changed against prior after the exchange, less before it.
        changes = (eb != was_a).astype(np.int64) + (ea != was_b) - (ea != was_a) - (eb != was_b)
        enough = after <= target_peak[:, None]
        changes = np.where(enough, changes.reshape(num_layers, -1), np.iinfo(np.int64).max)
        fewest = changes == changes.min(1, keepdims=True)
        best = np.where(enough.any(1), np.where(fewest, after, np.inf).argmin(1), best)
    take = after[rows, best] < layout.loads[rows, h] * _IMPROVES
    i, rest = np.divmod(best, num_ranks * slots)
    rb, sb_index = np.divmod(rest, slots)
    layers = rows[take]
    layout.exchange(layers, (h[take], i[take]), (rb[take], sb_index[take]))
    return take
