"""plan_model: whole-model plans, move-aware replanning and placement constraints.

Balancedness is recomputed here by ``golden_rank_loads``, plain loops written from the op's
contract (not the planner's vectorised scoring), on the tables the planner returns.
"""

import numpy as np
import pytest
import torch
from eplb_greedy import greedy_table
from hypothesis import given, settings
from hypothesis import strategies as st

from torchair_plugin import validate_eplb_table
from torchair_plugin.eplb import plan_model, plan_placement, table_from_phy2log, table_to_phy2log


def golden_rank_loads(table, load, num_ranks):
    """{mode: [load of each rank]} for one layer's table: replica k (in row order) of an expert
    with c replicas gets load / c in balance_mode 1; in mode 0 the tokens of source ranks r with
    r // ceil(R / c) == k, each source rank sending load / R."""
    rows = table.tolist()
    slots = sum(row[0] for row in rows) // num_ranks
    out = {0: [0.0] * num_ranks, 1: [0.0] * num_ranks}
    for expert, row in enumerate(rows):
        count, replicas = row[0], row[1 : 1 + row[0]]
        for physical in replicas:
            out[1][physical // slots] += load[expert] / count
        group = -(-num_ranks // count)
        for source in range(num_ranks):
            out[0][replicas[source // group] // slots] += load[expert] / num_ranks
    return out


def golden_balancedness(table, load, num_ranks, mode):
    # In units of the largest load: balancedness does not depend on the scale, and in raw units
    # subnormal loads (5e-324) underflow when split (5e-324 / 2 == 0), which made a one-slot
    # plan of loads [0, 5e-324] look perfectly balanced (the "below the greedy" of issue 20).
    load = np.asarray(load, dtype=np.float64)
    load = load / load.max() if load.max() > 0 else load
    loads = golden_rank_loads(table, load, num_ranks)[mode]
    peak = max(loads)
    return sum(loads) / len(loads) / peak if peak > 0 else 1.0


def _zipf_layers(num_layers, num_experts, skew, seed=0):
    rng = np.random.default_rng(seed)
    base = 1.0 / np.arange(1, num_experts + 1) ** skew
    return np.stack([rng.permutation(base) for _ in range(num_layers)])


def _check_rules(plan, num_ranks, slots, ranks_per_node=None, pinned=None):
    """One replica of an expert per rank, the node caps, the pins; from phy2log, by loops."""
    nodes = num_ranks // (ranks_per_node or num_ranks)
    for layer, phy2log in enumerate(plan.phy2log.tolist()):
        per_rank = [phy2log[r * slots : (r + 1) * slots] for r in range(num_ranks)]
        for experts in per_rank:
            assert len(set(experts)) == len(experts), f"layer {layer}: an expert twice on a rank: {experts}"
        counts = {e: phy2log.count(e) for e in set(phy2log)}
        if ranks_per_node:
            for e, count in counts.items():
                for node in range(nodes):
                    on_node = sum(e in per_rank[r] for r in range(node * ranks_per_node, (node + 1) * ranks_per_node))
                    assert on_node <= -(-count // nodes), f"layer {layer}: expert {e} {on_node}x on node {node}"
        if pinned is not None:
            pins = np.broadcast_to(np.asarray(pinned), plan.phy2log.shape[:1] + (len(counts),))[layer]
            for e, rank in enumerate(pins.tolist()):
                if rank >= 0:
                    assert e in per_rank[rank], f"layer {layer}: pinned expert {e} not on rank {rank}"


@st.composite
def setups(draw):
    num_ranks = draw(st.integers(2, 8))
    slots = draw(st.integers(1, 5))
    num_experts = draw(st.integers(slots, num_ranks * slots))
    num_layers = draw(st.integers(1, 3))
    loads = np.array(
        draw(
            st.lists(
                # Token counts. Fractional and subnormal loads (5e-324) found two open bugs in the
                # matrix run (issue 20's note): below the greedy, and a move-aware loss past max_loss=0.
                st.lists(st.integers(0, 10_000).map(float), min_size=num_experts, max_size=num_experts),
                min_size=num_layers,
                max_size=num_layers,
            )
        )
    )
    return num_ranks, slots, loads


@settings(max_examples=120, deadline=None, derandomize=True)
@given(setup=setups(), mode=st.sampled_from([0, 1]), data=st.data())
def test_every_plan_validates_round_trips_and_keeps_the_rules(setup, mode, data):
    num_ranks, slots, loads = setup
    num_layers, num_experts = loads.shape
    divisors = [d for d in range(1, num_ranks + 1) if num_ranks % d == 0]
    ranks_per_node = data.draw(st.sampled_from([None] + divisors))
    pinned = None
    if data.draw(st.booleans()):
        # Any pins a rank has the slots for (ranks may be full of them): every such layout has a
        # plan (test_pins_that_leave_few_count_choices is one this test found refused).
        pinned = np.array(
            data.draw(st.lists(st.integers(-1, num_ranks - 1), min_size=num_experts, max_size=num_experts))
        )
        for rank in range(num_ranks):
            pinned[np.nonzero(pinned == rank)[0][slots:]] = -1
    # A cap on the counts: F - 1 replicas must still cover the slots (ceil(P / E) each).
    fewest = -(-num_ranks * slots // num_experts) + 1
    columns = data.draw(st.one_of(st.none(), st.integers(max(2, fewest), num_ranks + 1)))
    plan = plan_model(
        loads,
        num_ranks=num_ranks,
        slots_per_rank=slots,
        balance_mode=mode,
        ranks_per_node=ranks_per_node,
        pinned=pinned,
        num_columns=columns,
    )
    tables = plan.eplb_tables
    assert tables.shape[:2] == (num_layers, num_experts)
    if columns is not None:
        assert tables.shape[2] == columns
    assert validate_eplb_table(tables, num_ranks, balance_mode=0) == num_ranks * slots  # valid for both modes
    assert torch.equal(table_to_phy2log(tables, num_ranks), torch.from_numpy(plan.phy2log))
    assert torch.equal(
        table_from_phy2log(plan.phy2log, num_ranks, num_logical=num_experts, num_columns=tables.shape[2]), tables
    )
    _check_rules(plan, num_ranks, slots, ranks_per_node, pinned)
    for layer in range(num_layers):
        golden = golden_balancedness(tables[layer], loads[layer], num_ranks, mode)
        assert plan.balancedness[layer] == pytest.approx(golden, rel=1e-9, abs=1e-12)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(setup=setups(), mode=st.sampled_from([0, 1]))
def test_never_below_the_greedy_on_any_layer(setup, mode):
    """Wherever the greedy's own plan keeps one replica of an expert per rank. Where it doubles
    an expert up on a rank, the second copy is a filler slot the rule forbids (see
    test_the_greedy_can_win_only_by_doubling_up)."""
    num_ranks, slots, loads = setup
    plan = plan_model(loads, num_ranks=num_ranks, slots_per_rank=slots, balance_mode=mode)
    for layer, load in enumerate(loads):
        table = greedy_table(load, num_ranks, slots)
        per_rank = table_to_phy2log(table, num_ranks).reshape(num_ranks, slots).tolist()
        if all(len(set(experts)) == slots for experts in per_rank):
            assert plan.balancedness[layer] >= golden_balancedness(table, load, num_ranks, mode) - 1e-9


def test_the_greedy_can_win_only_by_doubling_up():
    """Loads (1, 2, 3) on 2 ranks x 2 slots: the greedy puts both replicas of expert 2 on rank 1
    (rank loads 3 and 3). With one replica per rank the best is 2.5 and 3.5 (0.857)."""
    load = np.array([1.0, 2.0, 3.0])
    table = greedy_table(load, 2, 2)
    assert sorted(table_to_phy2log(table, 2).tolist()[2:]) == [2, 2]
    assert golden_balancedness(table, load, 2, 1) == 1.0
    plan = plan_model(load[None], num_ranks=2, slots_per_rank=2)
    assert plan.balancedness[0] == pytest.approx(3 / 3.5)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(setup=setups(), mode=st.sampled_from([0, 1]), max_loss=st.sampled_from([0.0, 0.002, 0.05]), data=st.data())
def test_move_aware_loses_at_most_its_bound(setup, mode, max_loss, data):
    num_ranks, slots, loads = setup
    shuffled = np.array([data.draw(st.permutations(row.tolist())) for row in loads])
    previous = plan_model(loads, num_ranks=num_ranks, slots_per_rank=slots, balance_mode=mode)
    plan = plan_model(
        shuffled,
        num_ranks=num_ranks,
        slots_per_rank=slots,
        balance_mode=mode,
        previous=previous.eplb_tables,
        max_loss=max_loss,
    )
    scratch = plan_model(shuffled, num_ranks=num_ranks, slots_per_rank=slots, balance_mode=mode)
    # With the F the move-aware plan keeps (the previous tables'), from scratch is what it reports.
    columns = previous.eplb_tables.shape[2]
    same_columns = plan_model(
        shuffled, num_ranks=num_ranks, slots_per_rank=slots, balance_mode=mode, num_columns=columns
    )
    assert plan.scratch_balancedness.tolist() == same_columns.balancedness.tolist()
    assert validate_eplb_table(plan.eplb_tables, num_ranks) == num_ranks * slots
    _check_rules(plan, num_ranks, slots)
    assert plan.moved.tolist() == (plan.phy2log != previous.phy2log).sum(1).tolist()
    for layer, load in enumerate(shuffled):
        ours = golden_balancedness(plan.eplb_tables[layer], load, num_ranks, mode)
        assert ours >= same_columns.balancedness[layer] - max_loss - 1e-9
        if scratch.eplb_tables.shape[2] <= columns:  # an uncapped plan that fits the kept F
            assert ours >= scratch.balancedness[layer] - max_loss - 1e-9
        assert ours == pytest.approx(plan.balancedness[layer], rel=1e-9, abs=1e-12)


def test_move_aware_bound_holds_against_the_uncapped_search():
    """Issue 20's move-aware loss past max_loss=0, on token counts: with ``previous`` the tables
    keep its F, so counts were searched under F - 1, and the search without that cap found a
    lighter plan that fits F anyway (0.9012 against 0.8941): the move-aware plan lost 0.007 at
    max_loss=0. A capped search now keeps the uncapped plan where it fits."""
    loads = np.array([[0.0] * 7 + [84, 245, 286, 567, 715, 147, 0]])
    setup = {"num_ranks": 7, "slots_per_rank": 4, "balance_mode": 0}
    uncapped = plan_model(loads, **setup)
    assert uncapped.eplb_tables.shape[2] == 4
    assert plan_model(loads, **setup, num_columns=4).balancedness[0] == uncapped.balancedness[0]
    previous = plan_model(loads[:, ::-1].copy(), **setup)
    assert previous.eplb_tables.shape[2] == 4
    plan = plan_model(loads, **setup, previous=previous.eplb_tables, max_loss=0.0)
    assert plan.scratch_balancedness[0] == uncapped.balancedness[0]
    assert golden_balancedness(plan.eplb_tables[0], loads[0], 7, 0) >= uncapped.balancedness[0] - 1e-12


def test_a_cap_the_uncapped_search_exceeds_on_some_layers():
    """One hot expert wants 4 replicas, the cap allows 2 (num_columns=3), the other layer fits:
    the uncapped candidate was rescored under the capped shares on every layer and raised
    IndexError; the same happened with ``previous`` tables whose F the new loads outgrow."""
    loads = np.array([[100.0] + [1.0] * 7, [1.0] * 8])
    plan = plan_model(loads, num_ranks=4, slots_per_rank=3, num_columns=3)
    assert plan.eplb_tables.shape == (2, 8, 3) and plan.counts.max() == 2
    _check_rules(plan, 4, 3)
    previous = plan_model(np.ones((2, 8)), num_ranks=4, slots_per_rank=3)
    assert previous.eplb_tables.shape[2] == 3
    again = plan_model(loads, num_ranks=4, slots_per_rank=3, previous=previous.eplb_tables)
    assert again.eplb_tables.shape == (2, 8, 3)
    assert validate_eplb_table(again.eplb_tables, 4) == 12


def test_same_loads_move_nothing():
    loads = _zipf_layers(4, 64, 1.2)
    first = plan_model(loads, num_ranks=8, slots_per_rank=10)
    again = plan_model(loads, num_ranks=8, slots_per_rank=10, previous=first.eplb_tables)
    assert again.moved.tolist() == [0, 0, 0, 0]
    assert torch.equal(again.eplb_tables, first.eplb_tables)


def _trade_on_the_bench_layer(pick):
    """One layer of the benchmark's drift (256 experts 1/i^1.2, 32 ranks x 9 slots), planned,
    then two experts chosen by ``pick(phy2log (R, S))`` trade loads; returns (the previous plan's
    ranks of each, the move-aware replan)."""
    load = (1.0 / np.arange(1, 257) ** 1.2)[None]
    previous = plan_model(load, num_ranks=32, slots_per_rank=9)
    slots = previous.phy2log[0].reshape(32, 9)
    first, second = pick(slots)
    traded = load.copy()
    traded[0, [first, second]] = traded[0, [second, first]]
    replan = plan_model(traded, num_ranks=32, slots_per_rank=9, previous=previous.eplb_tables)
    ranks = [set(np.nonzero((slots == e).any(1))[0].tolist()) for e in (first, second)]
    assert replan.balancedness[0] >= replan.scratch_balancedness[0] - 0.002
    return ranks, replan


@pytest.mark.parametrize("places", [(20, 21), (30, 33), (3, 4), (0, 1)])
def test_a_trade_between_ranks_costs_what_relabelling_costs(places):
    """Among the benchmark drift's 35 hottest places, the smallest trade of two single-replica
    experts (one place apart) shifts a rank by 0.4% of the mean load, twice what max_loss allows:
    the replan must undo it, and does so with the slots a relabelling of the two needs (an
    exchange: 2; replicated experts: one slot per rank that gains one of them), not more."""
    ranks, replan = _trade_on_the_bench_layer(lambda slots: places)
    assert not ranks[0] & ranks[1]
    assert replan.moved[0] == len(ranks[0]) + len(ranks[1])


def test_a_trade_within_a_rank_moves_nothing():
    # The hottest single-replica expert and the coldest single-replica one on its rank: the rank's
    # load stays (experts are numbered hottest first).
    def pick(slots):
        counts = np.bincount(slots.ravel(), minlength=256)
        hottest = np.nonzero(counts == 1)[0].min()
        rank = slots[np.nonzero((slots == hottest).any(1))[0][0]]
        return hottest, rank[counts[rank] == 1].max()

    _, replan = _trade_on_the_bench_layer(pick)
    assert replan.moved[0] == 0


def test_drift_moves_far_fewer_replicas_than_replanning():
    """Two hot experts trade places in every layer: a from-scratch plan rewrites many slots, the
    move-aware one only what the new counts and balance need, within 0.002."""
    loads = _zipf_layers(6, 64, 1.2)
    previous = plan_model(loads, num_ranks=8, slots_per_rank=10)
    drifted = loads.copy()
    for row in drifted:
        hot = np.argsort(-row)
        row[hot[0]], row[hot[2]] = row[hot[2]], row[hot[0]]
    aware = plan_model(drifted, num_ranks=8, slots_per_rank=10, previous=previous.eplb_tables)
    scratch = plan_model(drifted, num_ranks=8, slots_per_rank=10)
    assert aware.moved.sum() * 2 <= (scratch.phy2log != previous.phy2log).sum()
    assert (aware.balancedness >= scratch.balancedness - 0.002 - 1e-12).all()


@pytest.mark.parametrize("mode", [0, 1])
def test_noisy_loads_move_few_replicas(mode):
    """Measured loads are noisy: +-5% on every expert leaves the counts right and a few ranks
    over the bound. A from-scratch plan rewrites nearly every slot; the move-aware one exchanges
    replicas between the heavy ranks and others (before: 211-282 of 288 slots on 5 of 6 layers),
    choosing among exchanges that are enough the one that changes fewest slots (before that: up
    to 54 slots a layer, more than a sixth of the from-scratch moves)."""
    setup = {"num_ranks": 32, "slots_per_rank": 9, "balance_mode": mode}
    loads = _zipf_layers(6, 256, 1.2)
    previous = plan_model(loads, **setup)
    noisy = loads * np.random.default_rng(3).uniform(0.95, 1.05, loads.shape)
    aware = plan_model(noisy, **setup, previous=previous.eplb_tables)
    scratch = plan_model(noisy, **setup)
    assert (aware.moved * 6 <= (scratch.phy2log != previous.phy2log).sum(1)).all(), aware.moved
    assert (aware.balancedness >= aware.scratch_balancedness - 0.002 - 1e-12).all()


@pytest.mark.parametrize("skew", [1.0, 1.5])
def test_mode1_targets_on_a_deepseek_like_model(skew):
    """256 experts on 32 ranks x 9 slots: >= 0.999 under balance_mode 1's split in every layer."""
    loads = _zipf_layers(4, 256, skew)
    plan = plan_model(loads, num_ranks=32, slots_per_rank=9)
    assert plan.balancedness.min() >= 0.999
    assert golden_balancedness(plan.eplb_tables[0], loads[0], 32, 1) == pytest.approx(plan.balancedness[0])


def test_mode0_no_lower_than_the_per_layer_planner():
    """balance_mode 0 at s = 1.5 (issue 20: mean balancedness no lower than plan_placement's,
    which reaches 0.986 or 0.994 a layer by doubling experts up on ranks). plan_model, one
    replica per rank, reached 0.9824 before its greedy candidate weighed replicas at their mode-0
    shares: a count that does not divide R leaves a short last replica, packed as a full one."""
    loads = _zipf_layers(6, 256, 1.5)
    plan = plan_model(loads, num_ranks=32, slots_per_rank=9, balance_mode=0)
    ours = [golden_balancedness(plan.eplb_tables[layer], load, 32, 0) for layer, load in enumerate(loads)]
    theirs = [
        golden_balancedness(plan_placement(load, 32, 9, balance_mode=0).eplb_table, load, 32, 0) for load in loads
    ]
    assert np.mean(ours) >= np.mean(theirs)


@pytest.mark.parametrize("mode", [0, 1])
def test_subnormal_loads_are_judged_in_units_of_the_largest(mode):
    """The matrix run's "below the greedy" with loads [0, 5e-324] on 2 ranks x 1 slot: every
    plan puts the loaded expert alone on a rank (0.5), but split in raw units 5e-324 / 2 == 0
    and the greedy's plan looked perfectly balanced. Judged in units of the largest load (as
    plan_model plans) both are 0.5, and a subnormal scale changes no plan."""
    plan = plan_model([[0.0, 5e-324]], num_ranks=2, slots_per_rank=1, balance_mode=mode)
    assert plan.balancedness[0] == 0.5
    assert golden_balancedness(greedy_table(np.array([0.0, 5e-324]), 2, 1), [0.0, 5e-324], 2, mode) == 0.5
    loads = _zipf_layers(2, 16, 1.2)
    normal = plan_model(loads, num_ranks=4, slots_per_rank=5, balance_mode=mode)
    tiny = plan_model(loads * 1e-310, num_ranks=4, slots_per_rank=5, balance_mode=mode)
    assert torch.equal(normal.eplb_tables, tiny.eplb_tables)


def test_one_replica_per_rank_where_the_greedy_doubles_up():
    """The greedy (like DeepSeek EPLB, see its issue 22) puts both replicas of expert 3 on rank 3
    here; plan_model never puts an expert twice on a rank."""
    load = np.array([1.0, 2.0, 19.0, 13.0])
    greedy = table_to_phy2log(greedy_table(load, 4, 2), 4).reshape(4, 2).tolist()
    assert greedy[3] == [3, 3]
    plan = plan_model(load[None], num_ranks=4, slots_per_rank=2)
    _check_rules(plan, 4, 2)
    assert plan.balancedness[0] >= golden_balancedness(greedy_table(load, 4, 2), load, 4, 1)


def test_node_aware_spreads_a_hot_expert_over_nodes():
    load = np.array([[100.0] + [1.0] * 15])
    spread = plan_model(load, num_ranks=8, slots_per_rank=3, ranks_per_node=4)
    phy2log = spread.phy2log[0].reshape(8, 3)
    count = int(spread.counts[0, 0])
    assert count >= 4
    per_node = [sum(0 in phy2log[r] for r in range(n * 4, (n + 1) * 4)) for n in range(2)]
    assert max(per_node) == -(-count // 2)


def test_pins_hold():
    """A static layout: expert e pinned to rank e % R; hot experts still get replicas elsewhere."""
    loads = _zipf_layers(2, 32, 1.5)
    pinned = np.arange(32) % 8
    plan = plan_model(loads, num_ranks=8, slots_per_rank=5, pinned=pinned)
    _check_rules(plan, 8, 5, pinned=pinned)
    assert plan.counts.max() > 1
    per_layer = np.full((2, 32), -1)
    per_layer[1, 3] = 0
    plan = plan_model(loads, num_ranks=8, slots_per_rank=5, pinned=per_layer)
    assert 3 in plan.phy2log[1, :5]


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("ranks_per_node", [None, 1, 2])
def test_pins_that_leave_few_count_choices(mode, ranks_per_node):
    """Issue 20's refusal, found by the property test above: 2 ranks x 4 slots, experts 0-4
    pinned round robin (rank 0 keeps one free slot, rank 1 two). Counts chosen from the loads
    (a second replica of expert 1 or 5) need two free slots on rank 0; only counts chosen while
    filling fit, e.g. rank 0: 0 2 4 5, rank 1: 1 3 5 0. It raised ValueError before."""
    pinned = [0, 1, 0, 1, 0, -1]
    loads = [[1.0, 2.0, 1.0, 0.0, 0.0, 2.0]]
    plan = plan_model(
        loads, num_ranks=2, slots_per_rank=4, balance_mode=mode, ranks_per_node=ranks_per_node, pinned=pinned
    )
    _check_rules(plan, 2, 4, ranks_per_node, pinned)
    assert validate_eplb_table(plan.eplb_tables, 2, balance_mode=0) == 8
    assert plan.balancedness[0] == pytest.approx(golden_balancedness(plan.eplb_tables[0], loads[0], 2, mode))


def test_pins_that_fill_a_rank():
    """Rank 0 full of pins, the hot expert pinned to rank 1: the spare slots of rank 1 go to
    experts of rank 0, never a second replica on a rank."""
    plan = plan_model([[0.0, 1.0, 0.0, 0.0]], num_ranks=2, slots_per_rank=3, pinned=[0, 1, 0, 0])
    _check_rules(plan, 2, 3, pinned=[0, 1, 0, 0])


def test_fixed_columns_and_previous_columns():
    loads = _zipf_layers(3, 32, 1.2)
    plan = plan_model(loads, num_ranks=4, slots_per_rank=10, num_columns=5)
    assert plan.eplb_tables.shape == (3, 32, 5) and plan.counts.max() <= 4
    again = plan_model(loads[::-1].copy(), num_ranks=4, slots_per_rank=10, previous=plan.eplb_tables)
    assert again.eplb_tables.shape == (3, 32, 5)


def test_deterministic_and_scale_free():
    loads = _zipf_layers(3, 64, 1.1)
    first = plan_model(loads, num_ranks=8, slots_per_rank=10, balance_mode=0)
    second = plan_model(loads * 1e-200, num_ranks=8, slots_per_rank=10, balance_mode=0)
    assert torch.equal(first.eplb_tables, second.eplb_tables)
    assert np.allclose(second.rank_loads * 1e200, first.rank_loads)
    zero = plan_model(np.zeros((2, 8)), num_ranks=2, slots_per_rank=5)
    assert zero.balancedness.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    "loads, kwargs, message",
    [
        ([1.0, 2.0], {}, r"loads must have 2 dimensions, got shape \(2,\)"),
        ([[1.0, -1.0]], {}, r"loads\[0, 1\] must be >= 0, got -1.0"),
        ([[1.0] * 4], {"num_ranks": 0}, r"num_ranks must be an int in \[1, 1024\], got 0"),
        (
            [[1.0] * 4],
            {"slots_per_rank": 1},
            r"num_ranks \* slots_per_rank = 2 physical experts must be in \[experts = 4",
        ),
        ([[1.0] * 4], {"balance_mode": 2}, r"balance_mode must be an int in \[0, 1\], got 2"),
        ([[1.0] * 4], {"max_loss": -0.1}, r"max_loss must be a number in \[0, 1\] \(balancedness\), got -0.1"),
        ([[1.0] * 4], {"ranks_per_node": 3, "num_ranks": 4}, r"ranks_per_node must divide num_ranks = 4, got 3"),
        ([[1.0] * 4], {"ranks_per_node": 0}, r"ranks_per_node must be an int in \[1, 2\], got 0"),
        ([[1.0] * 4], {"pinned": [0, 1]}, r"pinned must have shape \(E,\) = \(4,\) or \(L, E\) = \(1, 4\), got \(2,\)"),
        (
            [[1.0] * 4],
            {"pinned": [0, 5, -1, -1]},
            r"pinned\[1\] must be a rank in \[0, 2\) or -1 \(not pinned\), got 5",
        ),
        (
            [[1.0] * 4],
            {"pinned": [0, 0, 0, -1]},
            r"pinned puts 3 experts on rank 0 \(layer 0\): more than slots_per_rank = 2",
        ),
        ([[1.0] * 4], {"num_columns": 1}, r"num_columns must be an int in \[2, 769\], got 1"),
        (
            [[1.0] * 4],
            {"previous": torch.zeros(2, 2, dtype=torch.int32)},
            r"previous must be the \(L, E, F\) eplb_tables",
        ),
        ([[1.0] * 4], {"previous": torch.zeros(1, 3, 2, dtype=torch.int32)}, r"previous must have \(L, E\) = \(1, 4\)"),
    ],
)
def test_bad_input_names_the_parameter(loads, kwargs, message):
    arguments = {"num_ranks": 2, "slots_per_rank": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        plan_model(loads, **arguments)


def test_previous_with_other_slot_counts_is_refused():
    previous = plan_model(np.ones((1, 4)), num_ranks=2, slots_per_rank=3).eplb_tables
    with pytest.raises(
        ValueError, match=r"previous holds 6 physical experts per layer, but num_ranks \* slots_per_rank = 4"
    ):
        plan_model(np.ones((1, 4)), num_ranks=2, slots_per_rank=2, previous=previous)
