"""The reference kernel (through torch.ops, as users call it) against the independent golden."""

import pytest
import torch
from golden import golden_update_expert
from hypothesis import HealthCheck, given, settings
from strategies import update_expert_inputs

import torchair_plugin
from torchair_plugin.reference import npu_moe_update_expert_reference

op = torch.ops.npu.npu_moe_update_expert.default
# The reference kernel as users reach it (through the dispatcher) and called directly.
KERNELS = pytest.mark.parametrize("kernel", [op, npu_moe_update_expert_reference], ids=["torch.ops", "direct"])
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_matches_golden(expert_ids, table, kwargs, device="cpu"):
    # Twice: a second call on the same inputs must not see anything the first one left behind.
    moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    want_ids, want_mask = golden_update_expert(expert_ids, table, **kwargs)
    on_device = expert_ids.to(device), table.to(device)
    for kernel in (op, npu_moe_update_expert_reference):
        for _ in range(2):
            balanced, mask = kernel(*on_device, **moved)
            assert balanced.dtype == expert_ids.dtype and mask.dtype == torch.bool
            assert balanced.shape == expert_ids.shape == mask.shape
            assert balanced.cpu().tolist() == want_ids
            assert mask.cpu().tolist() == want_mask


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(update_expert_inputs())
def test_matches_golden_over_the_whole_range(case):
    assert_matches_golden(*case)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@settings(max_examples=100, deadline=None)
@given(update_expert_inputs())
def test_cuda_matches_golden(case):
    assert_matches_golden(*case, device="cuda")


def table_of(rows, f):
    return torch.tensor([row + [0] * (f - len(row)) for row in rows], dtype=torch.int32)


def test_mode0_uses_ceil_division_and_groups_ranks_contiguously():
    # world_size 8, count 5: ceil(8/5) = 2 ranks per replica, replicas 1..4 used, 5 never.
    table = table_of([[5, 10, 11, 12, 13, 14]], 9)
    ids = torch.zeros(1, 1, dtype=torch.int32)
    chosen = [op(ids, table, local_rank_id=r, world_size=8)[0].item() for r in range(8)]
    assert chosen == [10, 10, 11, 11, 12, 12, 13, 13]


def test_mode1_uses_the_token_row_not_the_flat_index():
    table = table_of([[3, 7, 8, 9], [1, 0]], 4)
    ids = torch.zeros(4, 2, dtype=torch.int64)
    balanced, _ = op(ids, table, balance_mode=1)
    assert balanced.tolist() == [[7, 7], [8, 8], [9, 9], [7, 7]]


def test_pruning_keeps_equality_and_applies_active_mask():
    table = table_of([[1, 0], [1, 1], [1, 2], [1, 3]], 2)
    ids = torch.arange(4, dtype=torch.int32).repeat(2, 1)
    scales = torch.tensor([[0.5, 0.25, 0.125, 0.125]] * 2, dtype=torch.bfloat16)
    threshold = torch.tensor([[0.5, 0.25, 0.125, 0.1250001]])
    _, mask = op(
        ids,
        table,
        expert_scales=scales,
        pruning_threshold=threshold,
        active_mask=torch.tensor([True, False]),
        balance_mode=1,
    )
    assert mask.tolist() == [[True, True, True, False], [False] * 4]


def test_mask_is_all_true_without_pruning_inputs():
    table = table_of([[2, 4, 5], [1, 0]], 3)
    _, mask = op(torch.zeros(3, 2, dtype=torch.int32), table, balance_mode=1)
    assert mask.all()


def test_non_contiguous_inputs_give_the_contiguous_answer():
    gen = torch.Generator().manual_seed(0)
    table = torch.randint(0, 100, (16, 6), generator=gen, dtype=torch.int32)
    table[:, 0] = torch.randint(1, 6, (16,), generator=gen)
    ids = torch.randint(0, 16, (8, 4), generator=gen, dtype=torch.int32)
    scales = torch.rand(8, 4, generator=gen)
    kwargs = dict(pruning_threshold=torch.full((4,), 0.2), balance_mode=1)
    want = op(ids, table, expert_scales=scales, **kwargs)
    wide_table = torch.zeros(16, 12, dtype=torch.int32)
    wide_table[:, ::2] = table
    got = op(ids.t().contiguous().t(), wide_table[:, ::2], expert_scales=scales.t().contiguous().t(), **kwargs)
    assert not wide_table[:, ::2].is_contiguous()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_python_function_and_op_agree():
    table = table_of([[2, 4, 5], [1, 3]], 3)
    ids = torch.tensor([[0, 1], [1, 0]], dtype=torch.int32)
    direct = npu_moe_update_expert_reference(ids, table, local_rank_id=1, world_size=2)
    wrapped = torchair_plugin.npu_moe_update_expert(ids, table, local_rank_id=1, world_size=2)
    assert torch.equal(direct[0], wrapped[0]) and direct[0].tolist() == [[5, 3], [3, 5]]


@pytest.mark.parametrize("device", DEVICES)
def test_out_of_range_expert_id_is_a_clear_error(device):
    table = table_of([[1, 0], [1, 1]], 2).to(device)
    ids = torch.tensor([[0, 2]], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"expert_ids values must be in \[0, moe_expert_num=2\), got 2"):
        op(ids, table, balance_mode=1)
    with pytest.raises(ValueError, match="got -1"):
        op(-ids.abs().clamp(max=1), table, balance_mode=1)


@pytest.mark.parametrize("count", [0, -3, 3, 2**23 + 1, 2**31 - 1, -(2**31)])
def test_bad_replica_count_of_a_used_expert_is_a_clear_error(count):
    table = table_of([[1, 0, 0], [count, 1, 2]], 3)
    ids = torch.ones(512, 1, dtype=torch.int32)  # the largest batch: no index room to wrap into
    for mode in (0, 1):
        with pytest.raises(ValueError, match=rf"eplb_table\[1, 0\].*\[1, F-1=2\], got {count}"):
            op(ids, table, local_rank_id=0, world_size=2, balance_mode=mode)


def test_bad_count_of_an_unused_expert_is_not_read():
    table = table_of([[1, 7, 0], [0, 1, 2]], 3)
    assert op(torch.zeros(2, 1, dtype=torch.int32), table, balance_mode=1)[0].tolist() == [[7], [7]]


def _pruning_case(bs=6, k=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(0, 50, (8, 4), generator=gen, dtype=torch.int32)
    table[:, 0] = torch.randint(1, 4, (8,), generator=gen)
    ids = torch.randint(0, 8, (bs, k), generator=gen, dtype=torch.int32)
    kwargs = dict(
        expert_scales=torch.rand(bs, k, generator=gen),
        pruning_threshold=torch.full((k,), 0.15),
        active_mask=torch.arange(bs) < bs - 1,
        balance_mode=1,
    )
    return ids, table, kwargs


def test_pruning_is_right_in_and_out_of_inference_mode_and_with_grad():
    # Calls in inference mode, outside it, with inputs that need grad (direct call) and with other
    # shapes in between must all give the golden answer, and every call fresh outputs.
    ids, table, kwargs = _pruning_case()
    with torch.inference_mode():
        assert_matches_golden(ids, table, kwargs)
    assert_matches_golden(ids, table, kwargs)
    assert_matches_golden(*_pruning_case(bs=3, k=2, seed=1)[:2], _pruning_case(bs=3, k=2, seed=1)[2])
    scales = kwargs["expert_scales"].clone().requires_grad_()
    for direct_call in (npu_moe_update_expert_reference,):
        direct = direct_call(ids, table, scales, kwargs["pruning_threshold"], kwargs["active_mask"], balance_mode=1)
        assert direct[1].tolist() == golden_update_expert(ids, table, **kwargs)[1]
    for kernel in (op, npu_moe_update_expert_reference):
        first = kernel(ids, table, **kwargs)[1]
        second = kernel(ids, table, **kwargs)[1]
        assert first.data_ptr() != second.data_ptr() and torch.equal(first, second)


@KERNELS
def test_pruning_from_several_threads_matches_golden(kernel):
    from concurrent.futures import ThreadPoolExecutor

    cases = [_pruning_case(seed=s) for s in range(8)]
    wants = [golden_update_expert(ids, table, **kw)[1] for ids, table, kw in cases]

    def run(case):
        ids, table, kw = case
        return [kernel(ids, table, **kw)[1].tolist() for _ in range(50)]

    with ThreadPoolExecutor(4) as pool:
        for got, want in zip(pool.map(run, cases), wants):
            assert all(g == want for g in got)


def _boundary_case(bs=64, k=16, seed=3):
    # Softmax-like rows, thresholds s[j] / sum(s) of row 0 in float32, every other one a float32
    # ulp higher: entries at the keep/prune boundary, where float32 and wider arithmetic disagree.
    gen = torch.Generator().manual_seed(seed)
    scales = torch.rand(bs, k, generator=gen, dtype=torch.float32).softmax(1).sort(1, descending=True).values
    scales[: bs // 2] = scales[0]
    threshold = scales[0] / scales[0].sum()
    threshold[1::2] = torch.nextafter(threshold[1::2], torch.tensor(1.0, dtype=torch.float32))
    ids = torch.arange(k, dtype=torch.int32).repeat(bs, 1)
    table = table_of([[1, e] for e in range(k)], 2)
    return (
        ids,
        table,
        dict(
            expert_scales=scales,
            pruning_threshold=threshold,
            active_mask=torch.ones(bs, dtype=torch.bool),
            balance_mode=1,
        ),
    )


@KERNELS
@pytest.mark.parametrize("default_dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_pruning_ignores_the_default_dtype_and_stays_right_after_it_is_set_back(default_dtype, kernel):
    # Issue 10.1: the pruning arithmetic once followed torch's default dtype, and kept it after
    # the default was set back.
    ids, table, kwargs = _boundary_case()
    want = golden_update_expert(ids, table, **kwargs)[1]
    assert not all(all(row) for row in want), "the case must prune something to mean anything"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        under_that_default = kernel(ids, table, **kwargs)[1].tolist()
    finally:
        torch.set_default_dtype(previous)
    assert kernel(ids, table, **kwargs)[1].tolist() == want  # nothing kept the other dtype
    assert under_that_default == want


@pytest.mark.parametrize("which", ["expert_ids", "eplb_table"])
def test_none_for_a_required_tensor_through_torch_ops_names_it(which):
    """Issue 10 item 7, the eager CPU path: was AttributeError: 'NoneType' object has no attribute 'shape'."""
    args = {"expert_ids": torch.zeros(2, 2, dtype=torch.int64), "eplb_table": torch.ones(3, 3, dtype=torch.int32)}
    args[which] = None
    with pytest.raises(Exception, match=rf"{which} must be a tensor .*got None"):
        torch.ops.npu.npu_moe_update_expert(args["expert_ids"], args["eplb_table"])


@pytest.mark.parametrize("attr", ["local_rank_id", "world_size", "balance_mode"])
def test_a_non_integer_attribute_of_a_direct_call_is_named(attr):
    table = table_of([[1, 0], [1, 1]], 2)
    ids = torch.zeros(1, 2, dtype=torch.int32)
    kwargs = dict(local_rank_id=1, world_size=2, balance_mode=0)
    kwargs[attr] = 1.0
    with pytest.raises(RuntimeError, match=rf"{attr} must be an int, got 1.0 \(float\)"):
        npu_moe_update_expert_reference(ids, table, **kwargs)


def test_mode1_row_index_is_exact_for_every_row_and_count():
    """Mode 1's slot ``i % count + 1`` (the kernel takes the remainder in float32) for every row
    of the largest batch and every count that balance_mode 1's largest F allows."""
    from torchair_plugin import limits

    rows = torch.arange(limits.MAX_BS)
    ids = torch.zeros(limits.MAX_BS, 1, dtype=torch.int32)
    wrong = []
    for count in range(1, limits.MODE1_MAX_F):
        table = torch.tensor([[count, *range(count)]], dtype=torch.int32)
        balanced, _ = op(ids, table, balance_mode=1)
        if not torch.equal(balanced.view(-1).long(), rows % count):
            wrong.append(count)
    assert wrong == []
