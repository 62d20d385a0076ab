"""Serving stacks' placement formats: each read as its docs describe it, written back, and checked
against the op: every physical id the op returns is one of that expert's replicas in the source."""

import json

import numpy as np
import pytest
import torch
from golden import golden_update_expert
from hypothesis import given, settings
from hypothesis import strategies as st

from torchair_plugin.eplb import (
    table_from_expert_map,
    table_from_rank_maps,
    table_from_sglang,
    table_to_expert_map,
    table_to_rank_maps,
    table_to_sglang,
)

# vllm-ascend's static placement file: 2 layers, 2 devices of 3 slots, 4 logical experts.
EXPERT_MAP = {
    "moe_layer_count": 2,
    "layer_list": [
        {
            "layer_id": 0,
            "device_count": 2,
            "device_list": [{"device_id": 0, "device_expert": [0, 1, 2]}, {"device_id": 1, "device_expert": [3, 0, 1]}],
        },
        {
            "layer_id": 1,
            "device_count": 2,
            "device_list": [{"device_id": 0, "device_expert": [3, 2, 1]}, {"device_id": 1, "device_expert": [0, 2, 3]}],
        },
    ],
}


def replicas_in_expert_map(data, layer):
    """{logical: set of physical ids} read straight from the JSON, device j's k-th slot = j*S+k."""
    devices = data["layer_list"][layer]["device_list"]
    slots = len(devices[0]["device_expert"])
    found = {}
    for j, device in enumerate(devices):
        for k, expert in enumerate(device["device_expert"]):
            found.setdefault(expert, set()).add(j * slots + k)
    return found


def op_never_leaves_the_replicas(table, replicas, world_size):
    """The op itself, on every rank (mode 0) and on token rows 0..2*world_size*E (mode 1), maps
    each logical expert e to one of replicas[e]."""
    experts = table.shape[0]
    ids = torch.arange(experts).repeat(2 * world_size).view(-1, 1)
    calls = [dict(local_rank_id=rank, world_size=world_size, balance_mode=0) for rank in range(world_size)]
    for kwargs in calls + [dict(balance_mode=1)]:
        balanced, _ = torch.ops.npu.npu_moe_update_expert(ids, table, **kwargs)
        assert all(int(b) in replicas[int(e)] for b, e in zip(balanced, ids)), kwargs


def test_vllm_ascend_expert_map_reads_and_writes_back(tmp_path):
    table, world_size = table_from_expert_map(EXPERT_MAP)
    assert world_size == 2 and table.shape == (2, 4, 3)
    assert table[0].tolist() == [[2, 0, 4], [2, 1, 5], [1, 2, -1], [1, 3, -1]]
    for layer in range(2):
        op_never_leaves_the_replicas(table[layer], replicas_in_expert_map(EXPERT_MAP, layer), world_size)
    assert table_to_expert_map(table, world_size) == EXPERT_MAP
    path = tmp_path / "expert_map.json"
    path.write_text(json.dumps(EXPERT_MAP))
    assert torch.equal(table_from_expert_map(str(path))[0], table)
    assert table_to_expert_map(table[0], world_size)["moe_layer_count"] == 1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("moe_layer_count"), r"the expert map has no 'moe_layer_count'"),
        (
            lambda d: d.update(moe_layer_count=3),
            r"moe_layer_count must equal the number of entries of layer_list \(2\), got 3",
        ),
        (
            lambda d: d["layer_list"][1]["device_list"][0].pop("device_expert"),
            r"layer_list\[1\].device_list\[0\] has no 'device_expert'",
        ),
        (
            lambda d: d["layer_list"][0]["device_list"][1]["device_expert"].pop(),
            r"layer_list\[0\]: every device must hold the same number \(>= 1\) of experts, got \[3, 2\]",
        ),
        (
            lambda d: d["layer_list"][0]["device_list"][1]["device_expert"].__setitem__(0, "x"),
            r"layer_list\[0\].device_list\[1\].device_expert\[0\] must be an integer, got 'x'",
        ),
        (
            lambda d: d["layer_list"][0]["device_list"][0]["device_expert"].__setitem__(0, 9),
            r"logical expert 4 has no physical slot in phy2log\[0\]",
        ),
    ],
)
def test_a_broken_expert_map_is_named(change, message):
    data = json.loads(json.dumps(EXPERT_MAP))
    change(data)
    with pytest.raises(ValueError, match=message):
        table_from_expert_map(data)


def test_an_unreadable_expert_map_file_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(ValueError, match=r"broken.json: cannot read the expert map"):
        table_from_expert_map(str(path))


@st.composite
def placements(draw):
    world_size = draw(st.integers(2, 6))
    slots = draw(st.integers(1, 4))
    total = world_size * slots
    experts = draw(st.integers(-(-total // world_size), total))
    pool = draw(st.permutations(list(range(experts)) * (world_size - 1)))
    return world_size, draw(st.permutations(list(range(experts)) + pool[: total - experts])), experts


def stack_rank_maps(phy2log, experts, world_size):
    """vllm-ascend v1 / MindIE: rank r routes e to its replica number r % count (ascending ids)."""
    replicas = [[p for p, e in enumerate(phy2log) if e == expert] for expert in range(experts)]
    return [[replicas[e][r % len(replicas[e])] for e in range(experts)] for r in range(world_size)], replicas


@settings(max_examples=60, deadline=None)
@given(placements())
def test_per_rank_maps_from_every_rank_give_a_table_the_op_keeps_within(case):
    world_size, phy2log, experts = case
    maps, replicas = stack_rank_maps(phy2log, experts, world_size)
    table = table_from_rank_maps(maps)
    op_never_leaves_the_replicas(table, [set(r) for r in replicas], world_size)
    # The op's own per-rank choice, in the same format: what local_rank_id=r returns.
    own = table_to_rank_maps(table, world_size)
    ids = torch.arange(experts).view(-1, 1)
    for rank in range(world_size):
        balanced, _ = golden_update_expert(ids, table, local_rank_id=rank, world_size=world_size, balance_mode=0)
        assert own[rank].tolist() == [b[0] for b in balanced]


def test_per_rank_maps_with_layers_and_conflicts():
    maps = np.array([[[0, 1, 2, 3], [3, 2, 1, 0]], [[4, 5, 2, 3], [3, 2, 5, 4]]])  # (ranks, layers, E)
    tables = table_from_rank_maps(maps)
    assert tables.shape == (2, 4, 3) and tables[0, 0].tolist() == [2, 0, 4]
    assert table_to_rank_maps(tables, 2).shape == (2, 2, 4)
    with pytest.raises(
        ValueError,
        match=r"rank_maps\[0, 1\] and rank_maps\[1, 3\] send logical experts 1 and 3 "
        r"to the same physical expert 1",
    ):
        table_from_rank_maps([[0, 1, 2, 3], [0, 5, 2, 1]])
    # A replica no rank routes to (physical 1) is invisible in per-rank maps.
    with pytest.raises(ValueError, match=r"physical expert 1 \(of 0..3\) is used by no rank in rank_maps"):
        table_from_rank_maps([[0, 2], [0, 3]])
    with pytest.raises(ValueError, match=r"rank_maps\[1, 0\] must be a physical expert id >= 0, got -1"):
        table_from_rank_maps([[0, 1], [-1, 1]])


def test_sglang_replica_map_both_ways():
    # 4 logical experts, 6 physical on 2 ranks; expert 0 on 0 and 3, expert 2 on 2 and 5.
    replica_map = torch.tensor([[[3, 0], [1, -1], [5, 2], [4, -1]]])
    num_valid = torch.tensor([[2, 1, 2, 1]])
    table = table_from_sglang(replica_map, num_valid, 2)
    assert table[0].tolist() == [[2, 0, 3], [1, 1, -1], [2, 2, 5], [1, 4, -1]]
    replicas = [set(row[:n].tolist()) for row, n in zip(replica_map[0], num_valid[0])]
    op_never_leaves_the_replicas(table[0], replicas, 2)
    back, valid = table_to_sglang(table, 2)
    assert valid.tolist() == num_valid.tolist() and back.tolist() == [[[0, 3], [1, -1], [2, 5], [4, -1]]]
    with pytest.raises(
        ValueError,
        match=r"logical_to_all_physical_map_num_valid\[0, 1\] \(replicas of a logical "
        r"expert\) must be in \[1, logical_to_all_physical_map.shape\[-1\]=2\], got 0",
    ):
        table_from_sglang(replica_map, torch.tensor([[2, 0, 2, 1]]), 2)
