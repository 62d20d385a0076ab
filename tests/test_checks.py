"""Every check the NPU applies fails at trace time with the parameter, the limit and the value.

Each case is run three ways: eagerly on CPU (reference kernel), under FakeTensorMode (the fake
kernel, what torch.compile traces with), and compiled with fullgraph=True.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import torchair_plugin
from torchair_plugin.checks import check_arguments
from torchair_plugin.schema import OpArguments

op = torch.ops.npu.npu_moe_update_expert.default


def valid_args(bs=4, k=2, experts=4, f=3):
    table = torch.ones(experts, f, dtype=torch.int32)
    return dict(
        expert_ids=torch.zeros(bs, k, dtype=torch.int32),
        eplb_table=table,
        expert_scales=torch.rand(bs, k),
        pruning_threshold=torch.full((k,), 0.1),
        active_mask=torch.ones(bs, dtype=torch.bool),
        local_rank_id=0,
        world_size=2,
        balance_mode=0,
    )


def with_(**changes):
    args = valid_args()
    args.update(changes)
    return args


# (case id, arguments, regex the message must match: parameter ... limit ... value)
INVALID = [
    ("balance_mode", with_(balance_mode=2), r"balance_mode must be 0 or 1, got 2"),
    ("balance_mode negative", with_(balance_mode=-1), r"balance_mode must be 0 or 1, got -1"),
    ("world_size low", with_(world_size=1), r"world_size must be in \[2, 768\], got 1"),
    ("world_size high", with_(world_size=769), r"world_size must be in \[2, 768\], got 769"),
    ("rank high", with_(local_rank_id=2), r"local_rank_id must be in \[0, world_size=2\), got 2"),
    ("rank negative", with_(local_rank_id=-1), r"local_rank_id must be in \[0, world_size=2\), got -1"),
    (
        "ids dtype",
        with_(expert_ids=torch.zeros(4, 2, dtype=torch.int16)),
        r"expert_ids.dtype must be int32 or int64, got int16",
    ),
    (
        "table dtype",
        with_(eplb_table=torch.ones(4, 3, dtype=torch.int64)),
        r"eplb_table.dtype must be int32, got int64",
    ),
    (
        "scales dtype",
        with_(expert_scales=torch.rand(4, 2, dtype=torch.float64)),
        r"expert_scales.dtype must be float16 or bfloat16 or float32, got float64",
    ),
    (
        "threshold dtype",
        with_(pruning_threshold=torch.full((2,), 0.1, dtype=torch.float16)),
        r"pruning_threshold.dtype must be float32, got float16",
    ),
    ("mask dtype", with_(active_mask=torch.ones(4, dtype=torch.uint8)), r"active_mask.dtype must be bool, got uint8"),
    ("ids rank", with_(expert_ids=torch.zeros(8, dtype=torch.int32)), r"expert_ids.dim\(\) must be 2 \(BS, K\), got 1"),
    (
        "BS high",
        with_(expert_ids=torch.zeros(513, 2, dtype=torch.int32)),
        r"BS = expert_ids.size\(0\) must be in \(0, 512\], got 513",
    ),
    (
        "BS zero",
        with_(expert_ids=torch.zeros(0, 2, dtype=torch.int32)),
        r"BS = expert_ids.size\(0\) must be in \(0, 512\], got 0",
    ),
    (
        "K high",
        with_(expert_ids=torch.zeros(4, 17, dtype=torch.int32), eplb_table=torch.ones(32, 3, dtype=torch.int32)),
        r"K = expert_ids.size\(1\) must be in \(0, 16\], got 17",
    ),
    (
        "K zero",
        with_(expert_ids=torch.zeros(4, 0, dtype=torch.int32)),
        r"K = expert_ids.size\(1\) must be in \(0, 16\], got 0",
    ),
    (
        "table rank",
        with_(eplb_table=torch.ones(4, 3, 1, dtype=torch.int32)),
        r"eplb_table.dim\(\) must be 2 \(moe_expert_num, F\), got 3",
    ),
    (
        "experts high",
        with_(eplb_table=torch.ones(1025, 3, dtype=torch.int32)),
        r"moe_expert_num = eplb_table.size\(0\) must be in \(0, 1024\], got 1025",
    ),
    (
        "experts below K",
        with_(eplb_table=torch.ones(1, 3, dtype=torch.int32)),
        r"moe_expert_num = eplb_table.size\(0\) must be >= K=2, got 1",
    ),
    (
        "F one",
        with_(eplb_table=torch.ones(4, 1, dtype=torch.int32)),
        r"F = eplb_table.size\(1\) must be in \(1, world_size\+1=3\], got 1",
    ),
    (
        "F above world_size+1",
        with_(eplb_table=torch.ones(4, 4, dtype=torch.int32)),
        r"F = eplb_table.size\(1\) must be in \(1, world_size\+1=3\], got 4",
    ),
    (
        "F above 769 in mode 1",
        with_(eplb_table=torch.ones(4, 770, dtype=torch.int32), balance_mode=1),
        r"F = eplb_table.size\(1\) must be in \(1, 769 \(balance_mode 1\)\], got 770",
    ),
    (
        "scales shape",
        with_(expert_scales=torch.rand(4, 3)),
        r"expert_scales.shape must be \(BS, K\) = \(4, 2\), got \(4, 3\)",
    ),
    (
        "scales rank",
        with_(expert_scales=torch.rand(8)),
        r"expert_scales.shape must be \(BS, K\) = \(4, 2\), got \(8,\)",
    ),
    (
        "threshold shape",
        with_(pruning_threshold=torch.rand(3)),
        r"pruning_threshold.shape must be \(K,\) or \(1, K\) = \(2,\), got \(3,\)",
    ),
    (
        "threshold 2-row",
        with_(pruning_threshold=torch.rand(2, 2)),
        r"pruning_threshold.shape must be \(K,\) or \(1, K\) = \(1, 2\), got \(2, 2\)",
    ),
    (
        "threshold rank 3",
        with_(pruning_threshold=torch.rand(1, 1, 2)),
        r"pruning_threshold.shape must be \(K,\) or \(1, K\) = \(2,\), got \(1, 1, 2\)",
    ),
    (
        "mask shape",
        with_(active_mask=torch.ones(5, dtype=torch.bool)),
        r"active_mask.shape must be \(BS,\) = \(4,\), got \(5,\)",
    ),
    (
        "scales without threshold",
        with_(pruning_threshold=None, active_mask=None),
        r"expert_scales and pruning_threshold must be given together.*expert_scales=given, pruning_threshold=None",
    ),
    (
        "threshold without scales",
        with_(expert_scales=None, active_mask=None),
        r"expert_scales and pruning_threshold must be given together.*expert_scales=None, pruning_threshold=given",
    ),
    (
        "mask without pruning",
        with_(expert_scales=None, pruning_threshold=None),
        r"active_mask must be None unless expert_scales and pruning_threshold are given",
    ),
]


@pytest.mark.parametrize("args,message", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_eager_call_rejects(args, message):
    with pytest.raises(RuntimeError, match="npu_moe_update_expert: " + message):
        op(**args)


@pytest.mark.parametrize("args,message", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_fake_kernel_rejects(args, message):
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        with pytest.raises(RuntimeError, match=message):
            op(**fake)


@pytest.mark.parametrize("args,message", [c[1:] for c in INVALID][::5], ids=[c[0] for c in INVALID][::5])
def test_compiled_call_rejects_at_trace_time(args, message):
    torch._dynamo.reset()  # a static compile: no automatic-dynamic from the previous cases
    tensors = {k: v for k, v in args.items() if isinstance(v, torch.Tensor)}
    attrs = {k: v for k, v in args.items() if not isinstance(v, torch.Tensor)}
    compiled = torch.compile(lambda **t: op(**t, **attrs), backend="eager", fullgraph=True)
    with pytest.raises(Exception, match=message):
        compiled(**tensors)


def check_arguments_of(**named):
    check_arguments(OpArguments(**named))


def test_checks_follow_the_kernels_order():
    # balance_mode is checked before dtypes, dtypes before shapes: the NPU's tiling order.
    args = with_(balance_mode=3, expert_ids=torch.zeros(600, 2, dtype=torch.int16))
    with pytest.raises(RuntimeError, match="balance_mode"):
        check_arguments_of(**args)
    args = with_(expert_ids=torch.zeros(600, 2, dtype=torch.int16))
    with pytest.raises(RuntimeError, match="expert_ids.dtype"):
        check_arguments_of(**args)


def test_mode1_ignores_world_size_and_rank():
    check_arguments_of(**with_(balance_mode=1, world_size=-1, local_rank_id=-1))


def test_device_mismatch_is_named():
    args = with_(eplb_table=torch.ones(4, 3, dtype=torch.int32, device="meta"))
    with pytest.raises(RuntimeError, match=r"eplb_table.device must be expert_ids' device \(cpu\), got meta"):
        check_arguments_of(**args)


def test_every_limit_is_accepted_at_its_edge():
    edge = dict(
        expert_ids=torch.zeros(512, 16, dtype=torch.int64),
        eplb_table=torch.ones(1024, 769, dtype=torch.int32),
        expert_scales=torch.rand(512, 16, dtype=torch.bfloat16),
        pruning_threshold=torch.rand(1, 16),
        active_mask=torch.ones(512, dtype=torch.bool),
        local_rank_id=767,
        world_size=768,
        balance_mode=0,
    )
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in edge.items()}
        ids, mask = op(**fake)
    assert ids.shape == (512, 16) and ids.dtype == torch.int64 and mask.dtype == torch.bool


def test_dynamic_batch_error_shows_the_concrete_size():
    torch._dynamo.reset()
    table = torch.ones(4, 3, dtype=torch.int32)
    compiled = torch.compile(lambda ids: op(ids, table, balance_mode=1), backend="eager", dynamic=True, fullgraph=True)
    compiled(torch.zeros(8, 2, dtype=torch.int32))
    with pytest.raises(Exception, match=r"BS = expert_ids.size\(0\) must be in \(0, 512\], got 513 \(symbolic s\d+\)"):
        compiled(torch.zeros(513, 2, dtype=torch.int32))


# A required tensor passed as None (issue 10, item 7): the dispatcher hands None to the kernels.
MISSING = [
    ("expert_ids", r"expert_ids must be a tensor \(BS, K\), got None"),
    ("eplb_table", r"eplb_table must be a tensor \(moe_expert_num, F\), got None"),
]


@pytest.mark.parametrize("name,message", MISSING)
def test_none_for_a_required_tensor_is_named_in_every_path(name, message):
    args = with_(**{name: None})
    message = "npu_moe_update_expert: " + message
    with pytest.raises(RuntimeError, match=message):
        torchair_plugin.npu_moe_update_expert(**args)  # eager, through the public wrapper
    with pytest.raises(RuntimeError, match=message):
        op(**{k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in args.items()})
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=message):
        op(**{k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()})
    torch._dynamo.reset()
    tensors = {k: v for k, v in args.items() if isinstance(v, torch.Tensor)}
    compiled = torch.compile(lambda **t: op(**t, **{name: None}, local_rank_id=0, world_size=2), backend="eager")
    with pytest.raises(Exception, match=message):
        compiled(**tensors)


def test_a_required_tensor_of_another_type_is_named():
    with pytest.raises(RuntimeError, match=r"eplb_table must be a tensor \(moe_expert_num, F\), got list"):
        check_arguments_of(**with_(eplb_table=[[1, 0]]))
