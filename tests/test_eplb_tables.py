import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchair_plugin import validate_eplb_table
from torchair_plugin.eplb import (
    PADDING,
    table_from_log2phy,
    table_from_phy2log,
    table_from_vllm,
    table_to_log2phy,
    table_to_phy2log,
)


@st.composite
def placements(draw):
    """(phy2log [P], world_size): every expert on 1..world_size slots, P divisible by world_size."""
    world_size = draw(st.integers(1, 8))
    num_experts = draw(st.integers(1, 12))
    counts = draw(st.lists(st.integers(1, world_size), min_size=num_experts, max_size=num_experts))
    while sum(counts) % world_size:  # terminates: all counts at world_size sum to a multiple
        counts[next(e for e, c in enumerate(counts) if c < world_size)] += 1
    return np.array(draw(st.permutations(np.repeat(np.arange(num_experts), counts).tolist()))), world_size


@settings(max_examples=60, deadline=None)
@given(placements())
def test_phy2log_round_trip(placement):
    phy2log, world_size = placement
    table = table_from_phy2log(phy2log, world_size)
    assert table.dtype == torch.int32
    assert table.shape[1] == max(2, int(table[:, 0].max()) + 1)  # smallest F
    assert table_to_phy2log(table, world_size).tolist() == phy2log.tolist()
    # Replicas in ascending physical id, padding documented.
    for row in table.tolist():
        assert row[1 : 1 + row[0]] == sorted(row[1 : 1 + row[0]])
        assert all(v == PADDING for v in row[1 + row[0] :])


@settings(max_examples=60, deadline=None)
@given(placements(), st.randoms(use_true_random=False))
def test_every_builder_gives_the_same_table_for_the_same_placement(placement, rng):
    """Issue 11 item 9: DeepSeek's log2phy lists replicas by replica rank, not by physical id; in
    balance_mode 0 the order routes, so every builder must put them in one order (ascending id)."""
    phy2log, world_size = placement
    table = table_from_phy2log(phy2log, world_size)
    log2phy, counts = table_to_log2phy(table, world_size)
    for e, c in enumerate(counts.tolist()):  # any order, as DeepSeek's output may have
        order = list(range(c))
        rng.shuffle(order)
        log2phy[e, :c] = log2phy[e, :c][order]
    assert torch.equal(table_from_log2phy(log2phy.numpy(), counts.numpy(), world_size), table)
    width = int(counts.max()) + 2  # vLLM's map is wider than the largest count
    vllm_map = torch.cat([log2phy, torch.full((counts.shape[0], width - log2phy.shape[1]), PADDING)], 1)
    assert torch.equal(table_from_vllm(vllm_map, counts.tolist(), world_size), table)
    assert table_to_log2phy(table, world_size, width=width)[0].shape == (counts.shape[0], width)


def test_deepseek_replica_rank_order_routes_like_phy2log():
    """The issue's case in miniature: expert 0's replica rank 0 sits on a later rank than replica
    rank 1. The op, on either builder's table, sends source rank 0's tokens to the lower id."""
    phy2log = [1, 0, 2, 0]  # world_size 2: rank 0 holds slots 0-1, rank 1 slots 2-3
    log2phy, logcnt = [[3, 1], [0, -1], [2, -1]], [2, 1, 1]  # replica rank order: 3 first
    tables = [table_from_phy2log(phy2log, 2), table_from_log2phy(log2phy, logcnt, 2)]
    assert torch.equal(tables[0], tables[1])
    ids = torch.zeros((1, 1), dtype=torch.int64)
    routed = [torch.ops.npu.npu_moe_update_expert(ids, t, local_rank_id=0, world_size=2)[0].item() for t in tables]
    assert routed == [1, 1]


def test_layer_stacks_share_one_f_and_round_trip():
    phy2log = np.array([[0, 1, 2, 0], [0, 1, 2, 2], [0, 1, 2, 1]])
    tables = table_from_phy2log(phy2log, 2)
    assert tables.shape == (3, 3, 3)
    assert torch.equal(table_to_phy2log(tables, 2), torch.from_numpy(phy2log))
    log2phy, logcnt = table_to_log2phy(tables, 2)
    assert log2phy.shape == (3, 3, 2) and logcnt.shape == (3, 3)
    assert torch.equal(table_from_log2phy(log2phy, logcnt, 2), tables)
    assert torch.equal(table_from_vllm(log2phy, logcnt, 2), tables)
    for layer in tables:
        validate_eplb_table(layer, 2)


def test_fixed_f_keeps_shapes_stable():
    table = table_from_phy2log([0, 1, 2, 3], 4, num_columns=5)
    assert table.shape == (4, 5)
    assert (table[:, 2:] == PADDING).all()
    assert torch.equal(table_to_phy2log(table, 4), torch.arange(4))


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: table_from_phy2log([0, 1, 4, 0], 2, num_logical=3),
            r"phy2log\[2\] must be a logical expert id in \[0, 3\), got 4",
        ),
        (lambda: table_from_phy2log([0, -1, 1, 0], 2), r"phy2log\[1\]"),
        (lambda: table_from_phy2log([0, 2, 2, 0], 2), "logical expert 1 has no physical slot"),
        (
            lambda: table_from_phy2log([[0, 1, 2, 1], [0, 1, 3, 2]], 2, num_logical=3),
            r"phy2log\[1\]\[2\] must be a logical expert id in \[0, 3\), got 3",
        ),
        (lambda: table_from_phy2log([0, 1, 2], 2), "divisible by world_size=2"),
        (lambda: table_from_phy2log([0.0, 1.0], 2), r"phy2log\[0\] must be an integer, got 0.0"),
        (lambda: table_from_phy2log([True, False], 2), r"phy2log\[0\] must be an integer, got True"),
        (lambda: table_from_phy2log([0, True], 2), r"phy2log\[1\] must be an integer, got True"),
        (lambda: table_from_phy2log(np.array([True, False]), 2), "phy2log must hold integers, got dtype bool"),
        # Issue 10: MemoryError (10**9 logical experts sized a count array) and wrapped values.
        (
            lambda: table_from_phy2log([0, 10**9], 2),
            r"phy2log\[1\] must be in \[0, 1023\] \(a logical expert id: the op takes at most 1024 experts\), got 1000000000",
        ),
        (lambda: table_from_phy2log([0, 1], 2, num_logical=10**9), r"num_logical must be an int in \[1, 1024\]"),
        (
            lambda: table_from_phy2log(np.array([0, 2**63], dtype=np.uint64), 2),
            r"phy2log\[1\] must be in \[-9223372036854775808, 9223372036854775807\] \(int64\), got 9223372036854775808",
        ),
        (lambda: table_from_phy2log([0] * 1025, 1), r"phy2log must hold 1 to 1024 physical experts"),
        (
            lambda: table_from_log2phy([[0, -(2**63)], [1, -1]], [2, 1], 3),
            r"log2phy\[0, 1\] .* got -9223372036854775808",
        ),
        (
            lambda: table_from_log2phy([[0, 2], [2, -1]], [2, 1], 3),
            r"log2phy\[0, 1\] and log2phy\[1, 0\] hold the same physical expert 2",
        ),
        (
            lambda: table_from_log2phy([[[0, 1], [2, -1]], [[0, 1], [1, -1]]], [[2, 1], [2, 1]], 3),
            r"log2phy\[1, 0, 1\] and log2phy\[1, 1, 0\] hold the same physical expert 1",
        ),
        (
            lambda: table_from_phy2log([0] * 9 + list(range(1, 8)), 8),
            r"got 9; balance_mode 0 uses at most world_size replicas per expert: cap the replicas",
        ),
        (lambda: table_from_phy2log([[[0, 1]]], 2), "phy2log must have 1 or 2 dimensions"),
        (lambda: table_from_phy2log([0, 1], 0), r"world_size must be an int >= 1, got 0"),
        (
            lambda: table_from_phy2log([0, 0, 1, 1], 2, num_columns=2),
            r"num_columns must be an int in \[max replica count \+ 1 = 3, world_size \+ 1 = 3\]",
        ),
        (
            lambda: table_from_phy2log([0, 0, 1, 1], 2, num_columns=4),
            r"num_columns must be an int in \[max replica count \+ 1 = 3, world_size \+ 1 = 3\]",
        ),
        (lambda: table_from_phy2log([0, 0, 0, 1], 2), "must be in \\[1, min\\(world_size=2"),
        (
            lambda: table_from_log2phy([[0, 1], [2, -1]], [2, 0], 2),
            r"logcnt\[1\] .* must be in \[1, log2phy.shape\[-1\]=2\], got 0",
        ),
        (lambda: table_from_log2phy([[0, 1], [2, -1]], [2, 3], 2), r"logcnt\[1\]"),
        (lambda: table_from_log2phy([[0, 1], [2, -1]], [2], 2), r"logcnt.shape must be \(2,\)"),
        (
            lambda: table_from_log2phy([[0, 5], [2, -1]], [2, 1], 3),
            r"log2phy\[0, 1\] \(replica 2 of logical expert 0\) must be a physical expert id in \[0, sum of logcnt=3\), got 5",
        ),
        (lambda: table_from_log2phy([[0.5]], [1], 1), r"log2phy\[0, 0\] must be an integer, got 0.5"),
        (
            lambda: table_from_vllm([[0, -1]], [2], 2),
            r"logical_to_physical_map\[0, 1\] \(replica 2 of logical expert 0\) must be a physical expert id in \[0, sum of logical_replica_count=2\), got -1",
        ),
        (lambda: table_from_vllm([[0, 1]], [[2]], 2), "logical_replica_count must have 1 dimensions"),
        (lambda: table_to_phy2log(torch.tensor([[1, 0]], dtype=torch.int64), 1), "eplb_table.dtype must be int32"),
        (lambda: table_to_phy2log([[1, 0]], 1), "eplb_table must be a torch.Tensor"),
        (
            lambda: table_to_log2phy(torch.tensor([[2, 0, 1]], dtype=torch.int32), 2, width=1),
            r"width must be an int in \[2, 1024\], got 1",
        ),
    ],
)
def test_bad_input_names_what_and_where(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_balance_mode_1_tables_from_every_builder():
    """Issue 11 items 10-11: 9 replicas on 8 ranks is a valid mode-1 table; F may exceed world_size + 1."""
    phy2log = [0] * 9 + list(range(1, 8))
    table = table_from_phy2log(phy2log, 8, balance_mode=1)
    assert table.shape == (8, 10) and table[0, 0] == 9
    log2phy, counts = table_to_log2phy(table, 8, balance_mode=1)
    assert torch.equal(table_from_log2phy(log2phy, counts, 8, balance_mode=1), table)
    assert torch.equal(
        table_from_vllm(log2phy, counts, 8, balance_mode=1, num_columns=12),
        torch.cat([table, torch.full((8, 2), PADDING, dtype=torch.int32)], 1),
    )
    assert table_to_phy2log(table, 8, balance_mode=1).tolist() == phy2log
    with pytest.raises(
        ValueError,
        match=r"num_columns must be an int in \[max replica count \+ 1 = 10, the op's limit = 769\], got 770",
    ):
        table_from_phy2log(phy2log, 8, balance_mode=1, num_columns=770)
    layers = table_from_phy2log(np.array([phy2log, phy2log[::-1]]), 8, balance_mode=1)
    assert validate_eplb_table(layers, 8, balance_mode=1) == 16


def test_numpy_integers_inside_lists():
    assert torch.equal(table_from_phy2log([np.int64(0), np.int32(1)], 2), table_from_phy2log([0, 1], 2))
