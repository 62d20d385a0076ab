"""StableEplbTable: one device table, F fixed at creation, validated plans written in place; the
compiled model follows every update without recompiling."""

import numpy as np
import pytest
import torch
from eplb_loop_model import Routing, fresh_counter, inputs
from golden import golden_update_expert
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounterWithBackend

from torchair_plugin.eplb import PADDING, StableEplbTable, table_from_phy2log

# world_size 4, 8 physical experts: expert 0 on slots 0 and 4, expert 3 on 3 and 6.
TABLE = [[2, 0, 4], [1, 1, -1], [1, 2, -1], [2, 3, 6], [1, 5, -1], [1, 7, -1]]
# The same 8 slots replanned: expert 0 now on 4 alone, expert 1 on 0 and 1.
NEW = [[1, 4, -1], [2, 0, 1], [1, 2, -1], [2, 3, 6], [1, 5, -1], [1, 7, -1]]


def padded(rows, f):
    return torch.tensor([row + [PADDING] * (f - len(row)) for row in rows], dtype=torch.int32)


def test_f_is_world_size_plus_one_by_default_and_the_table_is_int32_on_the_initial_device():
    stable = StableEplbTable(np.array(TABLE, dtype=np.int64), world_size=4)
    assert stable.tensor.dtype == torch.int32 and stable.shape == (6, 5)
    assert torch.equal(stable.tensor, padded(TABLE, 5))
    assert (stable.physical_experts, stable.slots_per_rank, stable.version) == (8, 2, 0)
    assert StableEplbTable(torch.tensor(TABLE), 4, num_columns=3).shape == (6, 3)


def test_update_writes_in_place_and_pads():
    stable = StableEplbTable(torch.tensor(TABLE, dtype=torch.int32), world_size=4)
    tensor, pointer = stable.tensor, stable.tensor.data_ptr()
    assert stable.update(torch.tensor(NEW, dtype=torch.int64)) is True
    assert stable.tensor is tensor and tensor.data_ptr() == pointer
    assert torch.equal(tensor, padded(NEW, 5))
    assert stable.update(NEW) is False and stable.version == 2  # same values: written, unchanged


def test_a_wider_table_is_accepted_when_the_extra_columns_are_padding():
    stable = StableEplbTable(TABLE, world_size=4, num_columns=3)
    stable.update([row + [PADDING] * (7 - len(row)) for row in NEW])
    assert torch.equal(stable.tensor, padded(NEW, 3))


@pytest.mark.parametrize(
    "change, message",
    [
        # vllm-ascend #9151: the same expert twice on one card (physical 1 listed twice)
        (
            lambda t: t[1].__setitem__(slice(0, 3), [2, 1, 1]) or t[0].__setitem__(slice(0, 3), [1, 0, -1]),
            r"physical expert 1 appears more than once in eplb_table, at \[1, 1\] and \[1, 2\]",
        ),
        (lambda t: t[2].__setitem__(0, 0), r"eplb_table\[2, 0\] \(replica count of logical expert 2\) must be in"),
        (
            lambda t: t[4].__setitem__(1, 9),
            r"eplb_table\[4, 1\] .* must be a physical expert id in \[0, sum of counts=8\)",
        ),
        (
            lambda t: t[2].__setitem__(slice(0, 3), [2, 2, 8]),
            r"sum of replica counts .* divisible by world_size=4 .*got 9",
        ),
        (lambda t: t[4].__setitem__(0, 5), r"eplb_table\[4, 0\] .* must be in \[1, min\(world_size=4, F-1=4\)\]"),
    ],
)
def test_an_invalid_plan_names_the_row_and_leaves_the_table_whole(change, message):
    stable = StableEplbTable(TABLE, world_size=4)
    before = stable.tensor.clone()
    bad = [list(row) + [PADDING] * (5 - len(row)) for row in NEW]
    change(bad)
    with pytest.raises(ValueError, match=message):
        stable.update(bad)
    assert torch.equal(stable.tensor, before) and stable.version == 0


def test_an_invalid_layer_of_a_stack_is_named_and_no_layer_is_written():
    stable = StableEplbTable([TABLE, NEW], world_size=4)
    before = stable.tensor.clone()
    broken = [NEW, [[1, 4, -1], [2, 0, 0], *NEW[2:]]]
    with pytest.raises(ValueError, match=r"^layer 1: physical expert 0 appears more than once"):
        stable.update(broken)
    assert torch.equal(stable.tensor, before)


@pytest.mark.parametrize(
    "new, message",
    [
        (torch.tensor(NEW, dtype=torch.float32), r"new must hold integers, got dtype float32"),
        (torch.tensor(NEW, dtype=torch.bool), r"new must hold integers, got dtype bool"),
        (torch.empty(6, 3, dtype=torch.int32, device="meta"), r"new must hold values, got a meta tensor"),
        (np.array([row[:1] + [2**31] + row[2:] for row in NEW]), r"new\[0, 1\] must be in \[-2147483648, 2147483647\]"),
        (NEW[:5], r"new table must have shape \(6, 'F'\) .*, got \(5, 3\)"),
        ([NEW], r"new table must have shape \(6, 'F'\)"),
        ([[2, e, e + 6] for e in range(6)], r"must hold 8 physical experts .*, got 12"),
    ],
)
def test_wrong_dtype_device_or_shape_is_refused_clearly(new, message):
    stable = StableEplbTable(TABLE, world_size=4)
    before = stable.tensor.clone()
    with pytest.raises(ValueError, match=message):
        stable.update(new)
    assert torch.equal(stable.tensor, before)


def test_a_count_beyond_the_fixed_f_names_the_row():
    stable = StableEplbTable(TABLE, world_size=4, num_columns=3)
    wider = [[3, 0, 4, 2], [1, 1, -1, -1], [1, 6, -1, -1], [1, 3, -1, -1], [1, 5, -1, -1], [1, 7, -1, -1]]
    with pytest.raises(ValueError, match=r"new\[0\]\[0\] \(replica count of logical expert 0\) must be <= F - 1 = 2"):
        stable.update(wider)


def test_balance_mode_1_takes_more_replicas_than_ranks_and_mode_0_refuses_them():
    many = [[5, 0, 1, 2, 3, 4], [1, 5, -1, -1, -1, -1]]  # 5 replicas on 2 ranks, 6 slots
    assert StableEplbTable(many, world_size=2, balance_mode=1, num_columns=8).shape == (2, 8)
    with pytest.raises(ValueError, match=r"num_columns must be an int in \[2, 3\], got 8"):
        StableEplbTable(many, world_size=2, balance_mode=0, num_columns=8)
    with pytest.raises(ValueError, match=r"initial\[0\]\[0\] .* must be <= F - 1 = 2"):
        StableEplbTable(many, world_size=2, balance_mode=0)


@st.composite
def placements(draw):
    """Two valid placements of the same experts on the same slots (phy2log permutations)."""
    world_size = draw(st.integers(2, 8))
    slots = world_size * draw(st.integers(1, 4))
    experts = draw(st.integers(-(-slots // world_size), slots))
    # Each expert has at most world_size replicas (mode 0's bound): extras drawn from a pool
    # holding every expert world_size - 1 times.
    pool = draw(st.permutations(list(range(experts)) * (world_size - 1)))
    logical = list(range(experts)) + pool[: slots - experts]
    first = draw(st.permutations(logical))
    second = draw(st.permutations(logical))
    return world_size, first, second


@settings(max_examples=60, deadline=None)
@given(placements(), st.integers(0, 10**6))
def test_any_valid_replan_is_written_and_any_duplicated_slot_is_refused(case, seed):
    world_size, first, second = case
    old = table_from_phy2log(first, world_size)
    new = table_from_phy2log(second, world_size)
    stable = StableEplbTable(old, world_size)
    pointer = stable.tensor.data_ptr()
    stable.update(new)
    f = stable.num_columns
    assert torch.equal(stable.tensor[:, : new.shape[1]], new) and (stable.tensor[:, new.shape[1] :] == PADDING).all()
    assert stable.tensor.data_ptr() == pointer
    # Corrupt one replica id into another slot's id: two (expert, replica) pairs share a slot.
    rows = [e for e in range(new.shape[0]) if int(new[e, 0]) >= 1]
    rng = np.random.default_rng(seed)
    row = int(rng.choice(rows))
    bad = new.clone()
    other = int((bad[:, 1] != bad[row, 1]).nonzero()[0]) if (bad[:, 1] != bad[row, 1]).any() else None
    if other is None:
        return
    bad[row, 1] = bad[other, 1]
    before = stable.tensor.clone()
    with pytest.raises(ValueError, match=r"appears more than once|must be divisible|must be a physical expert id"):
        stable.update(bad)
    assert torch.equal(stable.tensor, before) and stable.num_columns == f


# --- compiled models follow the update without recompiling ----------------------------------------


def golden(ids, table, mode=1, rank=-1, ws=-1, scales=None, threshold=0.3):
    k = ids.shape[1]
    return golden_update_expert(ids, table, scales, torch.full((k,), threshold), None, rank, ws, mode)


def _follow_updates(compiled, model, stable, k=2):
    """Call before and after two updates; every output equal to the golden of the table then."""
    for step, new in enumerate([None, NEW, TABLE]):
        if new is not None:
            stable.update(new)
        for bs in (5, 9):
            ids, scales = inputs(bs, k, 6, seed=10 * step + bs)
            balanced, mask = compiled(ids, scales)
            want_ids, want_mask = golden(
                ids, stable.tensor, model.balance_mode, model.local_rank_id, model.world_size, scales
            )
            assert balanced.tolist() == want_ids and mask.tolist() == want_mask, (step, bs)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("mode", [0, 1])
def test_compiled_model_follows_the_update_with_one_compile(backend, mode):
    counter = fresh_counter(backend)
    stable = StableEplbTable(TABLE, world_size=4)
    model = Routing(
        stable.tensor, balance_mode=mode, local_rank_id=3 if mode == 0 else -1, world_size=4 if mode == 0 else -1
    )
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    _follow_updates(compiled, model, stable)
    assert counter.frame_count == 1


def test_a_table_whose_f_changes_recompiles_which_the_fixed_f_avoids():
    """The recompile the fixed F prevents: a plan with a larger max count has a larger F."""
    narrow = table_from_phy2log([0, 1, 2, 3, 4, 5, 0, 1], 4)  # F 3
    wide = table_from_phy2log([0, 1, 2, 3, 4, 5, 0, 0], 4)  # F 4 (expert 0 thrice)
    ids = torch.zeros(3, 2, dtype=torch.int64)

    def compiled_route():
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("eager")
        route = torch.compile(
            lambda ids, t: torch.ops.npu.npu_moe_update_expert(ids, t, balance_mode=1), backend=counter
        )
        return route, counter

    route, counter = compiled_route()
    route(ids, narrow)
    route(ids, wide)
    assert counter.frame_count == 2
    route, counter = compiled_route()
    stable = StableEplbTable(narrow, world_size=4)
    route(ids, stable.tensor)
    stable.update(wide)
    # Expert 0 now has replicas 0, 6, 7: mode 1 gives token row i replica i % 3.
    assert route(ids, stable.tensor)[0].tolist() == [[0, 0], [6, 6], [7, 7]] and counter.frame_count == 1


@pytest.mark.parametrize("frozen_parameter", [False, True])
def test_ge_capture_follows_the_update_without_a_recompile(frozen_parameter):
    from torchair_plugin.testing import GraphCapture
    from torchair_plugin.testing.pytest_plugin import require_ge_capture

    config = require_ge_capture().CompilerConfig()
    config.experimental_config.frozen_parameter = frozen_parameter
    stable = StableEplbTable(TABLE, world_size=4)
    model = Routing(stable.tensor)
    capture = GraphCapture(model, dynamic=True, config=config, fullgraph=True)
    _follow_updates(capture, model, stable)
    assert capture.result.fx_graph_count == 1, capture.result.summary()
    assert capture.result.recompile_reasons == []
    (node,) = capture.result.graph.ops_of_type("MoeUpdateExpert")
    assert node.inputs[1].source == "Data(self.table):0"
