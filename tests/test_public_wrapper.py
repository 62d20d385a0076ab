"""torchair_plugin.npu_moe_update_expert: the reference kernel called directly in plain eager mode on
CPU, ``torch.ops`` wherever anything else could see or change the call."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import torchair_plugin
from torchair_plugin import _registration_state, ops

from golden import golden_update_expert
from strategies import update_expert_inputs

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


def takes_direct_path(ids, table, kwargs) -> bool:
    full = dict(expert_scales=None, pruning_threshold=None, active_mask=None,
                local_rank_id=-1, world_size=-1, balance_mode=0)
    full.update(kwargs)
    return ops._dispatcher_would_run_the_reference(ids, table, *full.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(update_expert_inputs())
def test_direct_path_matches_golden_over_the_whole_range(case):
    expert_ids, table, kwargs = case
    assert takes_direct_path(expert_ids, table, kwargs)
    want_ids, want_mask = golden_update_expert(expert_ids, table, **kwargs)
    for _ in range(2):  # a new table, then the same table again (remembered on CPU)
        balanced, mask = torchair_plugin.npu_moe_update_expert(expert_ids, table, **kwargs)
        assert balanced.dtype == expert_ids.dtype and mask.dtype == torch.bool
        assert balanced.tolist() == want_ids and mask.tolist() == want_mask


def test_direct_path_and_torch_ops_give_the_same_errors():
    ids, table, kwargs = small_inputs()
    bad = dict(kwargs, world_size=1)
    with pytest.raises(RuntimeError) as direct:
        torchair_plugin.npu_moe_update_expert(ids, table, **bad)
    with pytest.raises(RuntimeError) as through_ops:
        OP(ids, table, **bad)
    assert str(direct.value) == str(through_ops.value)
    assert "world_size" in str(direct.value)


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
            lambda i, t: torchair_plugin.npu_moe_update_expert(i, t, **kwargs), backend=recording_backend, fullgraph=True)
        balanced, _ = compiled(ids, table)
    finally:
        torch._dynamo.reset()
    assert any(target in (OP, torch.ops.npu.npu_moe_update_expert) for target in targets), targets
    assert balanced.tolist() == [[5, 3], [3, 5]]


def test_functorch_transforms_take_torch_ops():
    ids, table, kwargs = small_inputs()
    seen = []

    def body(batched_ids):
        seen.append(takes_direct_path(batched_ids, table, kwargs))
        return batched_ids

    torch.func.vmap(body)(ids.unsqueeze(0).expand(3, -1, -1))
    assert seen == [False]


class Tagged(torch.Tensor):
    pass


@pytest.mark.parametrize("change", [
    "subclass", "meta tensor", "numpy int attr", "bool attr", "not registered", "cpu kernel not ours",
])
def test_anything_the_dispatcher_could_treat_differently_takes_torch_ops(change, monkeypatch):
    ids, table, kwargs = small_inputs()
    assert takes_direct_path(ids, table, kwargs)
    if change == "subclass":
        table = table.as_subclass(Tagged)
    elif change == "meta tensor":
        kwargs["expert_scales"] = kwargs["expert_scales"].to("meta")
    elif change == "numpy int attr":
        kwargs["local_rank_id"] = np.int64(1)
    elif change == "bool attr":
        kwargs["local_rank_id"] = True
    elif change == "not registered":
        monkeypatch.setattr(_registration_state, "registration", None)
    else:
        registration = _registration_state.registration
        plan = type(registration.plan)(registration.plan.define_schema, registration.plan.install_fake, ())
        monkeypatch.setattr(registration, "plan", plan)
    assert not takes_direct_path(ids, table, kwargs)


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
