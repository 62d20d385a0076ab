"""validate_eplb_table / validate_expert_ids / validate_active_mask: the values the NPU never checks."""

import numpy as np
import pytest
import torch

from torchair_plugin import validate_active_mask, validate_eplb_table, validate_expert_ids


def table(rows, f=None):
    f = f or max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (f - len(r)) for r in rows], dtype=torch.int32)


GOOD = table([[2, 0, 3], [1, 1], [1, 2]])  # 4 physical experts on 2 ranks


def test_a_good_table_returns_its_physical_expert_count():
    assert validate_eplb_table(GOOD, world_size=2) == 4


@pytest.mark.parametrize(
    "bad,world_size,message",
    [
        (GOOD.long(), 2, r"eplb_table.dtype must be int32, got torch.int64"),
        (GOOD[0], 2, r"eplb_table.shape must be \(moe_expert_num >= 1, F >= 2\) or \(layers, .*got \(3,\)"),
        (
            table([[0, 0], [1, 1]]),
            2,
            r"eplb_table\[0, 0\] \(replica count of logical expert 0\) must be in \[1, min\(world_size=2, F-1=1\)\], got 0",
        ),
        (table([[3, 0, 1, 2], [1, 3]]), 2, r"eplb_table\[0, 0\].*must be in \[1, min\(world_size=2, F-1=3\)\], got 3"),
        (table([[1, 0], [1, 1], [1, 2]]), 2, r"sum of replica counts .* divisible by world_size=2.*got 3"),
        (
            table([[2, 0, 4], [1, 1], [1, 2]]),
            2,
            r"eplb_table\[0, 2\] \(replica 2 of logical expert 0\) must be a physical expert id in \[0, sum of counts=4\), got 4",
        ),
        (table([[2, 0, -1], [1, 1], [1, 2]]), 2, r"eplb_table\[0, 2\].*got -1"),
        (
            table([[2, 0, 1], [1, 1], [1, 2]]),
            2,
            r"physical expert 1 appears more than once in eplb_table, at \[0, 2\] and \[1, 1\]",
        ),
        (torch.ones(1025, 2, dtype=torch.int32), 1, r"sum of replica counts must be <= 1024, got 1025"),
        (GOOD, 0, r"world_size must be an int >= 1, got 0"),
        ([[1, 0]], 1, r"eplb_table must be a torch.Tensor, got list"),
    ],
)
def test_bad_tables_name_the_first_offender(bad, world_size, message):
    with pytest.raises(ValueError, match=message):
        validate_eplb_table(bad, world_size=world_size)


def test_padding_is_not_read():
    padded = table([[1, 0, 12345], [1, 1, -7]])
    assert validate_eplb_table(padded, world_size=2) == 2


def test_expert_ids():
    validate_expert_ids(torch.tensor([[0, 2]]), moe_expert_num=3)
    with pytest.raises(ValueError, match=r"expert_ids must hold integers, got torch.float32"):
        validate_expert_ids(torch.tensor([[0.0, 1.5]]), moe_expert_num=3)
    with pytest.raises(ValueError, match=r"expert_ids\[1, 0\] must be in \[0, moe_expert_num=3\), got 3"):
        validate_expert_ids(torch.tensor([[0, 2], [3, 1]]), moe_expert_num=3)


def test_active_mask_must_be_a_true_prefix():
    assert validate_active_mask(torch.tensor([True, True, False])) == 2
    assert validate_active_mask(torch.tensor([True, True])) is None
    with pytest.raises(ValueError, match=r"active_mask\[1\] is False but active_mask\[3\] is True"):
        validate_active_mask(torch.tensor([True, False, False, True]))
    with pytest.raises(ValueError, match="1-D bool"):
        validate_active_mask(torch.tensor([1, 0]))


@pytest.mark.parametrize("physical", [4, 2147483647, -5])
def test_a_physical_id_outside_the_slots_is_returned_by_the_kernel_and_rejected_by_the_validator(physical):
    """docs/op.md and docs/graph-mode.md: the NPU copies a physical id from the chosen column as
    it is stored, so the reference kernel does too; only validate_eplb_table refuses it."""
    bad = table([[2, 0, physical], [1, 1], [1, 2]])  # 4 slots on 2 ranks
    ids = torch.tensor([[0, 1], [0, 2]], dtype=torch.int32)
    balanced, _ = torch.ops.npu.npu_moe_update_expert(ids, bad, local_rank_id=1, world_size=2)
    assert balanced.tolist() == [[physical, 1], [physical, 2]]  # rank 1 of 2 takes replica 2
    balanced, _ = torch.ops.npu.npu_moe_update_expert(ids, bad, balance_mode=1)
    assert balanced.tolist() == [[0, 1], [physical, 2]]  # row i takes replica i % 2 + 1
    with pytest.raises(ValueError, match=rf"eplb_table\[0, 2\] .* in \[0, sum of counts=4\), got {physical}"):
        validate_eplb_table(bad, world_size=2)


NINE_ON_EIGHT = table([[9, *range(9)], *[[1, 9 + i] for i in range(7)]])  # 16 physical experts


def test_balance_mode_1_allows_more_replicas_than_ranks_and_wider_rows():
    """Issue 11 item 11: mode 1 splits by token row, so counts above world_size are used, and F
    may be up to 769; mode 0 refuses both and says what to do."""
    assert validate_eplb_table(NINE_ON_EIGHT, world_size=8, balance_mode=1) == 16
    with pytest.raises(
        ValueError,
        match=r"got 9; balance_mode 0 uses at most world_size replicas per expert: "
        r"cap the replicas at world_size \(plan_placement does\), or use the "
        r"table with balance_mode=1",
    ):
        validate_eplb_table(NINE_ON_EIGHT, world_size=8)
    wide = table([[1, 0], [1, 1]], f=769)
    assert validate_eplb_table(wide, world_size=2, balance_mode=1) == 2
    with pytest.raises(ValueError, match=r"F \(columns\) must be <= 3 \(world_size \+ 1 in balance_mode 0\), got 769"):
        validate_eplb_table(wide, world_size=2)
    with pytest.raises(ValueError, match=r"F \(columns\) must be <= 769 \(the op's limit in balance_mode 1\), got 770"):
        validate_eplb_table(table([[1, 0], [1, 1]], f=770), world_size=2, balance_mode=1)
    with pytest.raises(ValueError, match=r"balance_mode must be an int in \[0, 1\], got 2"):
        validate_eplb_table(GOOD, world_size=2, balance_mode=2)


def test_the_op_agrees_with_the_mode_rules():
    """What validation accepts per mode, the op's own shape check accepts too."""
    ids = torch.zeros((1, 1), dtype=torch.int64)
    torch.ops.npu.npu_moe_update_expert(ids, NINE_ON_EIGHT, local_rank_id=0, world_size=8, balance_mode=1)
    wide = table([[1, 0], [1, 1]], f=769)
    torch.ops.npu.npu_moe_update_expert(ids, wide, local_rank_id=0, world_size=2, balance_mode=1)
    with pytest.raises(RuntimeError):
        torch.ops.npu.npu_moe_update_expert(ids, wide, local_rank_id=0, world_size=2, balance_mode=0)


def test_per_layer_stacks():
    stack = torch.stack([GOOD, table([[1, 0], [2, 1, 3], [1, 2]])])
    assert validate_eplb_table(stack, world_size=2) == 4
    with pytest.raises(ValueError, match=r"layer 1: eplb_table\[0, 2\] .*got 9"):
        validate_eplb_table(torch.stack([GOOD, table([[2, 0, 9], [1, 1], [1, 2]])]), world_size=2)
    with pytest.raises(ValueError, match=r"every layer must hold the same number of physical experts, got \[4, 6\]"):
        validate_eplb_table(torch.stack([GOOD, table([[2, 0, 1], [2, 2, 3], [2, 4, 5]])]), world_size=2)


def test_numpy_integers_are_accepted_like_python_ints():
    """Issue 10: the builders accept numpy ints (shapes and loads come from numpy); so does validation."""
    assert validate_eplb_table(GOOD, world_size=np.int64(2), balance_mode=np.int32(0)) == 4
    validate_expert_ids(torch.tensor([[0, 2]]), moe_expert_num=np.int64(3))
    for bad in (True, 2.0, "2"):
        with pytest.raises(ValueError, match=r"world_size must be an int, got"):
            validate_eplb_table(GOOD, world_size=bad)
