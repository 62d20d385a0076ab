"""torchair_plugin.npu_moe_update_expert: a thin call of ``torch.ops``, so the dispatcher decides every
route and the wrapper gives what ``torch.ops`` gives, edge cases included."""

import inspect

import numpy as np
import pytest
import torch
from golden import golden_update_expert
from hypothesis import HealthCheck, given, settings
from strategies import update_expert_inputs
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import torchair_plugin
from torchair_plugin import ops

OP = torch.ops.npu.npu_moe_update_expert.default


def small_inputs():
    table = torch.tensor([[2, 4, 5], [1, 3, 0]], dtype=torch.int32)
    ids = torch.tensor([[0, 1], [1, 0]], dtype=torch.int32)
    kwargs = dict(
        expert_scales=torch.tensor([[0.9, 0.1], [0.5, 0.5]]),
        pruning_threshold=torch.tensor([0.2, 0.2]),
        local_rank_id=1,
        world_size=2,
    )
    return ids, table, kwargs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(update_expert_inputs())
def test_wrapper_matches_golden_over_the_whole_range(case):
    expert_ids, table, kwargs = case
    want_ids, want_mask = golden_update_expert(expert_ids, table, **kwargs)
    balanced, mask = torchair_plugin.npu_moe_update_expert(expert_ids, table, **kwargs)
    assert balanced.dtype == expert_ids.dtype and mask.dtype == torch.bool
    assert balanced.tolist() == want_ids and mask.tolist() == want_mask


def outcome(call):
    """What a call gives: its outputs as lists, or its exception's type and message."""
    try:
        return [t.tolist() for t in call()]
    except Exception as error:  # noqa: BLE001  (the outcome is the exception, whatever it is)
        return type(error), str(error)


def _negative_bit_scales(ids, table, kwargs):
    # A view whose values are negated lazily (the neg bit): readers must resolve it.
    scales = kwargs["expert_scales"]
    view = torch.complex(torch.zeros_like(scales), -scales).conj().imag
    assert view.is_neg()
    return ids, table, dict(kwargs, expert_scales=view)


def _misaligned_ids(ids, table, kwargs):
    raw = torch.zeros(ids.numel() * 4 + 1, dtype=torch.uint8)
    view = torch.frombuffer(bytearray(raw.numpy().tobytes()), dtype=torch.int32, offset=1, count=ids.numel())
    view.copy_(ids.reshape(-1))
    return view.view(ids.shape), table, kwargs


EDGE_CASES = {
    "negative-bit scales view": _negative_bit_scales,
    "misaligned expert_ids": _misaligned_ids,
    "sparse eplb_table": lambda ids, table, kwargs: (ids, table.to_sparse(), kwargs),
    "mkldnn expert_scales": lambda ids, table, kwargs: (
        ids,
        table,
        dict(kwargs, expert_scales=kwargs["expert_scales"].to_mkldnn()),
    ),
    "world_size 2**63": lambda ids, table, kwargs: (ids, table, dict(kwargs, world_size=2**63)),
    "float local_rank_id": lambda ids, table, kwargs: (ids, table, dict(kwargs, local_rank_id=1.0)),
    "numpy int attr": lambda ids, table, kwargs: (ids, table, dict(kwargs, local_rank_id=np.int64(1))),
    "bool attr": lambda ids, table, kwargs: (ids, table, dict(kwargs, local_rank_id=True)),
    "world_size 1": lambda ids, table, kwargs: (ids, table, dict(kwargs, world_size=1)),
    "None expert_ids": lambda ids, table, kwargs: (None, table, kwargs),
}


@pytest.mark.parametrize("case", EDGE_CASES)
def test_wrapper_gives_what_torch_ops_gives(case):
    ids, table, kwargs = EDGE_CASES[case](*small_inputs())
    through_wrapper = outcome(lambda: torchair_plugin.npu_moe_update_expert(ids, table, **kwargs))
    through_ops = outcome(lambda: OP(ids, table, **kwargs))
    assert through_wrapper == through_ops


def test_edge_cases_give_values_or_named_errors():
    # What the dispatcher and the reference make of them (the wrapper agrees, above).
    want = [[[5, 3], [3, 5]], [[True, False], [True, True]]]
    ids, table, kwargs = _misaligned_ids(*small_inputs())
    assert outcome(lambda: OP(ids, table, **kwargs)) == want
    ids, table, kwargs = _negative_bit_scales(*small_inputs())
    assert torch.equal(kwargs["expert_scales"], small_inputs()[2]["expert_scales"])  # neg of the stored -s
    assert outcome(lambda: OP(ids, table, **kwargs)) == want
    for case in ("sparse eplb_table", "mkldnn expert_scales"):
        ids, table, kwargs = EDGE_CASES[case](*small_inputs())
        assert outcome(lambda: OP(ids, table, **kwargs))[0] is NotImplementedError, case
    ids, table, kwargs = EDGE_CASES["world_size 2**63"](*small_inputs())
    assert outcome(lambda: OP(ids, table, **kwargs))[0] is RuntimeError


@pytest.mark.skipif(
    "allow_override" not in inspect.signature(torch.library.Library.impl).parameters,
    reason="this torch's Library.impl refuses to override a Python kernel (torch < 2.8)",
)
def test_a_cpu_kernel_registered_after_import_is_what_the_wrapper_runs():
    ids, table, kwargs = small_inputs()
    want = torchair_plugin.npu_moe_update_expert(ids, table, **kwargs)
    library = torch.library.Library("npu", "IMPL")
    try:
        library.impl(
            OP._schema.name.split("::")[1], lambda *args, **kw: (ids.neg(), ids.eq(0)), "CPU", allow_override=True
        )
        replaced = torchair_plugin.npu_moe_update_expert(ids, table, **kwargs)
        assert torch.equal(replaced[0], ids.neg())
    finally:
        library._destroy()
    restored = torchair_plugin.npu_moe_update_expert(ids, table, **kwargs)
    assert torch.equal(restored[0], want[0]) and torch.equal(restored[1], want[1])


def test_the_wrapper_is_one_call_of_torch_ops():
    source = inspect.getsource(ops)
    assert "torch._C" not in source and source.count("torch.ops.npu.npu_moe_update_expert.default(") == 1


class OpsSeen(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


class FunctionsSeen(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.functions = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.functions.append(func)
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_op():
    ids, table, kwargs = small_inputs()
    with OpsSeen() as mode:
        balanced, _ = torchair_plugin.npu_moe_update_expert(ids, table, **kwargs)
    assert mode.ops == [OP]
    assert balanced.tolist() == [[5, 3], [3, 5]]


def test_a_torch_function_mode_sees_the_op():
    ids, table, kwargs = small_inputs()
    with FunctionsSeen() as mode:
        torchair_plugin.npu_moe_update_expert(ids, table, **kwargs)
    assert OP in mode.functions


def test_fake_tensors_get_the_fake_kernel():
    ids, table, kwargs = small_inputs()
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        balanced, mask = torchair_plugin.npu_moe_update_expert(mode.from_tensor(ids), mode.from_tensor(table), **fake)
    assert type(balanced).__name__ == "FakeTensor" and balanced.shape == mask.shape == (2, 2)


def test_the_profiler_records_the_op():
    ids, table, kwargs = small_inputs()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        torchair_plugin.npu_moe_update_expert(ids, table, **kwargs)
    assert "npu::npu_moe_update_expert" in {event.name for event in profiler.events()}


def test_torch_compile_records_the_op():
    ids, table, kwargs = small_inputs()
    targets = []

    def recording_backend(gm, example_inputs):
        targets.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    try:
        compiled = torch.compile(
            lambda i, t: torchair_plugin.npu_moe_update_expert(i, t, **kwargs),
            backend=recording_backend,
            fullgraph=True,
        )
        balanced, _ = compiled(ids, table)
    finally:
        torch._dynamo.reset()
    assert any(target in (OP, torch.ops.npu.npu_moe_update_expert) for target in targets), targets
    assert balanced.tolist() == [[5, 3], [3, 5]]


def test_numpy_int_attrs_still_work_through_torch_ops():
    ids, table, kwargs = small_inputs()
    want = torchair_plugin.npu_moe_update_expert(ids, table, **kwargs)
    got = torchair_plugin.npu_moe_update_expert(ids, table, **dict(kwargs, local_rank_id=np.int64(1)))
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_torch_jit_trace_records_the_op():
    ids, table, kwargs = small_inputs()
    traced = torch.jit.trace(lambda i, t: torchair_plugin.npu_moe_update_expert(i, t, **kwargs), (ids, table))
    assert "npu::npu_moe_update_expert" in str(traced.graph)
    assert traced(ids, table)[0].tolist() == [[5, 3], [3, 5]]
