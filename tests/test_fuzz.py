"""Fuzz: thousands of random argument combinations, valid and invalid, through eager, fake and
compiled calls. Each must give the golden result or a RuntimeError/ValueError with a message
naming the op; never another exception type, a hang or a crash.

The generator mutates a valid call: wrong ranks, dtypes, sizes, attribute values, optional inputs
missing or unpaired, empty and non-contiguous tensors, out-of-range ids and replica counts.
"""

import random

import pytest
import torch
from golden import golden_update_expert
from torch._subclasses.fake_tensor import FakeTensorMode

import torchair_plugin  # noqa: F401

op = torch.ops.npu.npu_moe_update_expert.default
OP_PREFIX = "npu_moe_update_expert: "
ALLOWED = (RuntimeError, ValueError)
DTYPES = [
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
]


def random_tensor(rng, shape, dtype, low=0, high=8):
    if dtype == torch.bool:
        return torch.rand(shape) < 0.5
    if dtype.is_floating_point:
        return (torch.rand(shape) * high).to(dtype)
    return torch.randint(low, high, shape).to(dtype)


def maybe_non_contiguous(rng, tensor):
    if tensor.dim() == 2 and rng.random() < 0.3:
        return tensor.t().contiguous().t()
    if tensor.dim() >= 1 and rng.random() < 0.2:
        doubled = torch.cat([tensor, tensor], dim=-1) if tensor.dim() else tensor
        return doubled[..., ::2]
    return tensor


def random_case(rng):
    mode = rng.choice([0, 1, 1, 0, rng.randint(-3, 5)])
    world_size = rng.choice([2, 4, 8, 16, 64]) if rng.random() < 0.9 else rng.choice([-1, 1, 769, 2**40])
    rank = rng.randrange(max(world_size, 1)) if rng.random() < 0.9 else rng.choice([-1, world_size, 2**40])
    bs = rng.choice([1, 2, 5, 17, 40, 0, 513]) if rng.random() < 0.2 else rng.randint(1, 40)
    k = rng.choice([1, 2, 4, 8, 16, 0, 17]) if rng.random() < 0.2 else rng.randint(1, 8)
    experts = max(k, 1) + rng.randint(0, 30)
    f = rng.randint(2, max(2, min(5, world_size + 1))) if rng.random() < 0.9 else rng.randint(2, 9)
    ids_shape = [bs, k]
    table_shape = [experts, f]
    if rng.random() < 0.05:
        ids_shape = rng.choice([[bs], [bs, k, 1], []])
    if rng.random() < 0.05:
        table_shape = rng.choice([[experts], [experts, f, 1], [experts, 1], [1025, f]])
    ids_dtype = rng.choice([torch.int32, torch.int64]) if rng.random() < 0.9 else rng.choice(DTYPES)
    table_dtype = torch.int32 if rng.random() < 0.9 else rng.choice(DTYPES)

    high_id = experts + (rng.randint(1, 3) if rng.random() < 0.08 else 0)
    low_id = -1 if rng.random() < 0.03 else 0
    expert_ids = random_tensor(rng, ids_shape, ids_dtype, low_id, max(high_id, 1))
    table = random_tensor(rng, table_shape, table_dtype, 0, 64)
    if table.dim() == 2 and table.size(1) >= 2 and not table.dtype.is_floating_point and table.dtype != torch.bool:
        table[:, 0] = torch.randint(1, table.size(1), (table.size(0),)).to(table.dtype)
        if rng.random() < 0.15:
            bad_counts = [0, -1, table.size(1)] + (
                [2**23 + 1, 2**31 - 1, -(2**31)] if table.dtype == torch.int32 else []
            )
            table[rng.randrange(table.size(0)), 0] = rng.choice(bad_counts)

    kwargs = dict(local_rank_id=rank, world_size=world_size, balance_mode=mode)
    pruning = rng.random() < 0.5
    if pruning or rng.random() < 0.1:
        dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32]) if rng.random() < 0.9 else rng.choice(DTYPES)
        shape = [bs, k] if rng.random() < 0.9 else [bs, k + 1]
        kwargs["expert_scales"] = maybe_non_contiguous(rng, random_tensor(rng, shape, dtype, 0, 1))
    if pruning or rng.random() < 0.1:
        shape = rng.choice([[k], [1, k]]) if rng.random() < 0.9 else rng.choice([[k + 1], [2, k], [1, 1, k]])
        dtype = torch.float32 if rng.random() < 0.9 else rng.choice(DTYPES)
        kwargs["pruning_threshold"] = random_tensor(rng, shape, dtype, 0, 1) * (0.5 if dtype.is_floating_point else 1)
    if (pruning and rng.random() < 0.5) or rng.random() < 0.05:
        shape = [bs] if rng.random() < 0.9 else [bs + 1]
        dtype = torch.bool if rng.random() < 0.9 else rng.choice(DTYPES)
        kwargs["active_mask"] = random_tensor(rng, shape, dtype, 0, 2)
    return maybe_non_contiguous(rng, expert_ids), maybe_non_contiguous(rng, table), kwargs


def reads_out_of_bounds(expert_ids, table):
    """Independent oracle for the ValueError cases: an id out of range, or a used bad count."""
    experts, f = table.shape
    ids = expert_ids.reshape(-1).tolist()
    if any(i < 0 or i >= experts for i in ids):
        return True
    counts = table[:, 0].tolist()
    return any(not 1 <= counts[i] <= f - 1 for i in set(ids))


def call_fake(expert_ids, table, kwargs):
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        convert = lambda v: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
        out = op(convert(expert_ids), convert(table), **{k: convert(v) for k, v in kwargs.items()})
        return [(t.shape, t.dtype) for t in out]


def outcome(fn):
    try:
        return "ok", fn()
    except ALLOWED as error:
        message = str(error)
        assert OP_PREFIX in message, f"unhelpful {type(error).__name__}: {message}"
        return type(error).__name__, message


@pytest.mark.parametrize("seed", range(4))
def test_eager_and_fake_agree_and_only_fail_cleanly(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    seen = {"ok": 0, "RuntimeError": 0, "ValueError": 0}
    for _ in range(400):
        expert_ids, table, kwargs = random_case(rng)
        fake_kind, fake_result = outcome(lambda: call_fake(expert_ids, table, kwargs))
        eager_kind, eager_result = outcome(lambda: op(expert_ids, table, **kwargs))
        seen[eager_kind] += 1
        if fake_kind == "RuntimeError":
            # A shape/dtype/attribute problem: the eager call says exactly the same.
            assert (eager_kind, eager_result) == (fake_kind, fake_result)
            continue
        assert fake_kind == "ok", fake_result
        if reads_out_of_bounds(expert_ids, table):
            assert eager_kind == "ValueError", eager_result
            continue
        assert eager_kind == "ok", eager_result
        balanced, mask = eager_result
        assert [(balanced.shape, balanced.dtype), (mask.shape, mask.dtype)] == fake_result
        want_ids, want_mask = golden_update_expert(expert_ids, table, **kwargs)
        assert balanced.tolist() == want_ids and mask.tolist() == want_mask
    # the generator reaches every outcome often
    assert min(seen.values()) > 20, seen


def test_compiled_calls_only_fail_cleanly():
    rng = random.Random(1234)
    for _ in range(100):
        expert_ids, table, kwargs = random_case(rng)
        tensors = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        attrs = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
        torch._dynamo.reset()
        compiled = torch.compile(lambda i, t, **opt: op(i, t, **opt, **attrs), backend="eager", fullgraph=True)
        eager_kind, eager_result = outcome(lambda: op(expert_ids, table, **kwargs))
        try:
            got = compiled(expert_ids, table, **tensors)
        except ALLOWED as error:
            assert eager_kind != "ok" and OP_PREFIX in str(error), str(error)
            continue
        assert eager_kind == "ok", eager_result
        assert torch.equal(got[0], eager_result[0]) and torch.equal(got[1], eager_result[1])
