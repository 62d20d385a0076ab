"""rebalance_gain: balancedness along the rank axis, the candidate's predicted balancedness under
the op's real split, replicas moved, and the skip rule, against plain loops and the op itself."""

import numpy as np
import pytest
import torch
from golden import golden_update_expert
from hypothesis import given, settings
from hypothesis import strategies as st

from torchair_plugin.eplb import (
    logical_load,
    plan_placement,
    rank_loads,
    rebalance_gain,
    skewed_routing,
    table_from_phy2log,
)

WORLD_SIZE = 4


def loop_rank_loads(physical, world_size):
    per_rank = len(physical) // world_size
    return [sum(physical[r * per_rank : (r + 1) * per_rank]) for r in range(world_size)]


def loop_balancedness(loads):
    return 1.0 if max(loads) == 0 else (sum(loads) / len(loads)) / max(loads)


def loop_physical_counts(routing, table, world_size, balance_mode):
    """Tokens per physical expert when every source rank routes its tokens through the golden op."""
    total = int(table[:, 0].sum())
    counts = [0] * total
    for rank, ids in enumerate(routing):
        for start in range(0, ids.shape[0], 512):
            balanced, _ = golden_update_expert(
                ids[start : start + 512], table, local_rank_id=rank, world_size=world_size, balance_mode=balance_mode
            )
            for row in balanced:
                for physical in row:
                    counts[physical] += 1
    return counts


def loop_moved(old, new, world_size):
    per_rank = len(old) // world_size
    moved = 0
    for r in range(world_size):
        held = list(old[r * per_rank : (r + 1) * per_rank])
        for expert in new[r * per_rank : (r + 1) * per_rank]:
            if expert in held:
                held.remove(expert)
            else:
                moved += 1
    return moved


def test_rank_loads_sum_blocks_of_the_last_axis():
    physical = np.arange(24).reshape(2, 12)  # 2 layers x 12 physical experts, 4 ranks of 3
    assert rank_loads(physical, 4).tolist() == [loop_rank_loads(list(row), 4) for row in physical.tolist()]
    with pytest.raises(ValueError, match=r"P = 12\) must be a multiple of world_size=5"):
        rank_loads(physical, 5)


def _setup(seed, skew=1.3, experts=8, slots=3, layers=2, tokens=300, top_k=2):
    routings = [skewed_routing(experts, WORLD_SIZE, tokens, top_k, skew, seed=seed + layer) for layer in range(layers)]
    # The current table: no knowledge of the load (expert e's extra replicas round robin).
    phy2log = [e % experts for e in range(WORLD_SIZE * slots)]
    current = table_from_phy2log([phy2log] * layers, WORLD_SIZE)
    return routings, current


@pytest.mark.parametrize("balance_mode", [0, 1])
def test_balancedness_now_is_per_layer_over_ranks(balance_mode):
    routings, current = _setup(seed=3)
    load = np.array([loop_physical_counts(r, current[i], WORLD_SIZE, balance_mode) for i, r in enumerate(routings)])
    gain = rebalance_gain(load, current, current, WORLD_SIZE, balance_mode=balance_mode)
    expected = [loop_balancedness(loop_rank_loads(list(row), WORLD_SIZE)) for row in load.tolist()]
    assert gain.balancedness_now.tolist() == pytest.approx(expected)
    heaviest = sum(max(loop_rank_loads(list(row), WORLD_SIZE)) for row in load.tolist())
    assert gain.model_balancedness_now == pytest.approx(load.sum() / WORLD_SIZE / heaviest)
    assert not gain.worth and gain.replicas_moved.tolist() == [0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mode_0_prediction_from_per_source_load_is_what_the_op_then_does(seed):
    routings, current = _setup(seed)
    per_source = np.array(
        [[_one_source(r, rank, current[i]) for rank in range(WORLD_SIZE)] for i, r in enumerate(routings)]
    )
    candidate = torch.stack(
        [
            plan_placement(_logical(r, 8, per_source=True), WORLD_SIZE, 3, balance_mode=0, num_columns=5).eplb_table
            for r in routings
        ]
    )
    gain = rebalance_gain(
        per_source, current, candidate, WORLD_SIZE, balance_mode=0, min_gain=0.05, bytes_per_expert=1000
    )
    measured = [
        loop_balancedness(loop_rank_loads(loop_physical_counts(r, candidate[i], WORLD_SIZE, 0), WORLD_SIZE))
        for i, r in enumerate(routings)
    ]
    assert gain.balancedness_predicted.tolist() == pytest.approx(measured)
    assert gain.gain > 0.05 and gain.worth


def _one_source(routing, rank, table):
    counts = [0] * int(table[:, 0].sum())
    balanced, _ = golden_update_expert(routing[rank], table, local_rank_id=rank, world_size=WORLD_SIZE, balance_mode=0)
    for row in balanced:
        for physical in row:
            counts[physical] += 1
    return counts


def _logical(routing, experts, per_source=False):
    counts = np.zeros((WORLD_SIZE, experts))
    for rank, ids in enumerate(routing.tolist()):
        for row in ids:
            for e in row:
                counts[rank, e] += 1
    return counts if per_source else counts.sum(0)


def test_mode_1_prediction_is_load_over_count_per_replica():
    routings, current = _setup(seed=7, layers=1)
    load = np.array(loop_physical_counts(routings[0], current[0], WORLD_SIZE, 1))
    candidate = plan_placement(_logical(routings[0], 8), WORLD_SIZE, 3, balance_mode=1).eplb_table
    gain = rebalance_gain(load, current[0], candidate, WORLD_SIZE, balance_mode=1)
    logical = _logical(routings[0], 8)
    physical = [0.0] * 12
    for e, row in enumerate(candidate.tolist()):
        for p in row[1 : 1 + row[0]]:
            physical[p] += logical[e] / row[0]
    assert gain.balancedness_predicted.tolist() == pytest.approx([loop_balancedness(loop_rank_loads(physical, 4))])
    assert gain.balancedness_now.shape == (1,)


@st.composite
def two_placements(draw):
    experts = draw(st.integers(2, 8))
    slots = WORLD_SIZE * draw(st.integers(2, 4))
    experts = min(experts, slots)
    pool = draw(st.permutations(list(range(experts)) * (WORLD_SIZE - 1)))
    logical = list(range(experts)) + pool[: slots - experts]
    return draw(st.permutations(logical)), draw(st.permutations(logical)), experts


@settings(max_examples=60, deadline=None)
@given(two_placements(), st.integers(1, 10**9))
def test_replicas_moved_are_the_experts_a_rank_did_not_hold(placements, bytes_per_expert):
    old, new, experts = placements
    current, candidate = table_from_phy2log(old, WORLD_SIZE), table_from_phy2log(new, WORLD_SIZE)
    gain = rebalance_gain(
        np.ones(len(old)), current, candidate, WORLD_SIZE, balance_mode=1, bytes_per_expert=bytes_per_expert
    )
    assert gain.replicas_moved.tolist() == [loop_moved(old, new, WORLD_SIZE)]
    assert gain.slots_changed.tolist() == [sum(a != b for a, b in zip(old, new))]
    assert gain.bytes_moved == loop_moved(old, new, WORLD_SIZE) * bytes_per_expert
    assert set(gain.to_dict()) >= {"gain", "worth", "replicas_moved", "balancedness_now", "balancedness_predicted"}


def test_bad_input_is_named():
    current = table_from_phy2log([0, 1, 2, 3, 0, 1, 2, 3], WORLD_SIZE)
    other = table_from_phy2log([0, 1, 2, 3, 4, 5, 0, 1], WORLD_SIZE)
    bad = current.clone()
    bad[0, 2] = bad[1, 1]
    with pytest.raises(ValueError, match=r"^candidate: physical expert 1 appears more than once"):
        rebalance_gain(np.ones(8), current, bad, WORLD_SIZE, balance_mode=1)
    with pytest.raises(ValueError, match=r"current and candidate must have the same layers, logical experts"):
        rebalance_gain(np.ones(8), current, other, WORLD_SIZE, balance_mode=1)
    with pytest.raises(ValueError, match=r"load must have shape \(8,\) .*got \(7,\)"):
        rebalance_gain(np.ones(7), current, current, WORLD_SIZE, balance_mode=1)
    with pytest.raises(ValueError, match=r"load must have shape \(4, 8\) \(tokens per physical expert, per source"):
        rebalance_gain(np.ones((3, 8)), current, current, WORLD_SIZE, balance_mode=0)
    with pytest.raises(ValueError, match=r"min_gain must be a number in \[-1, 1\]"):
        rebalance_gain(np.ones(8), current, current, WORLD_SIZE, balance_mode=1, min_gain=2)
    with pytest.raises(ValueError, match=r"load\[3\] must be >= 0, got -1.0"):
        rebalance_gain([1, 1, 1, -1, 1, 1, 1, 1], current, current, WORLD_SIZE, balance_mode=1)


def test_logical_load_sums_each_experts_replicas_keeping_leading_axes():
    table = table_from_phy2log([0, 1, 2, 3, 0, 1, 0, 3], WORLD_SIZE)  # expert 0 on 0, 4, 6
    physical = np.arange(16).reshape(2, 8)  # two source ranks
    expected = [
        [sum(row[p] for p in range(8) if [0, 1, 2, 3, 0, 1, 0, 3][p] == e) for e in range(4)] for row in physical
    ]
    assert logical_load(physical, table).tolist() == expected
    stacked = torch.stack([table, table])
    assert logical_load(np.stack([physical, physical]), stacked).shape == (2, 2, 4)
    with pytest.raises(
        ValueError, match=r"physical_load must have shape \(2, \.\.\., 8\) to match eplb_table, got \(3, 8\)"
    ):
        logical_load(np.ones((3, 8)), stacked)
