"""What `import torchair_plugin` installs, for every state the op can be found in.

The decision table is pure (plan_registration); applying it is exercised for real on ops created
here in a private namespace, standing in for torch_npu's native op with and without its meta.
"""

import importlib
import sys
import threading
import time

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import torchair_plugin
from torchair_plugin import registration as reg
from torchair_plugin.schema import SCHEMA

ALL_DEVICES = ("CPU", "CUDA")


@pytest.mark.parametrize("torch_npu_loaded", [False, True])
def test_absent_op_gets_everything_from_the_plugin(torch_npu_loaded):
    plan = reg.plan_registration(reg.OpState(schema_exists=False, torch_npu_loaded=torch_npu_loaded), reg.Options())
    assert plan.define_schema and plan.install_fake
    assert plan.reference_keys == ALL_DEVICES + (("PrivateUse1",) if torch_npu_loaded else ())


@pytest.mark.parametrize("keep_native_fake", [False, True])
def test_native_op_with_meta_keeps_device_kernels(keep_native_fake):
    state = reg.OpState(schema_exists=True, kernel_keys=frozenset({"PrivateUse1", "Meta"}), torch_npu_loaded=True)
    plan = reg.plan_registration(state, reg.Options(keep_native_fake=keep_native_fake))
    assert not plan.define_schema
    assert plan.install_fake is not keep_native_fake
    assert plan.reference_keys == ALL_DEVICES  # CPU/CUDA filled in, the NPU kernel left alone


@pytest.mark.parametrize("keep_native_fake", [False, True])
def test_native_op_without_meta_always_gets_the_fake(keep_native_fake):
    state = reg.OpState(schema_exists=True, kernel_keys=frozenset({"PrivateUse1"}), torch_npu_loaded=True)
    assert reg.plan_registration(state, reg.Options(keep_native_fake=keep_native_fake)).install_fake


def test_op_without_npu_kernel_gets_the_reference_on_npu():
    state = reg.OpState(schema_exists=True, kernel_keys=frozenset({"Meta"}), torch_npu_loaded=True)
    assert "PrivateUse1" in reg.plan_registration(state, reg.Options()).reference_keys


def test_composite_kernel_is_never_shadowed():
    state = reg.OpState(schema_exists=True, kernel_keys=frozenset({"CompositeExplicitAutograd"}))
    assert reg.plan_registration(state, reg.Options()).reference_keys == ()


@pytest.mark.parametrize("value,keep", [("", False), ("0", False), ("1", True), ("yes", True)])
def test_opt_out_environment_variable(value, keep):
    assert reg.Options.from_environ({reg.NATIVE_FAKE_ENV: value}).keep_native_fake is keep


def test_this_machine_gets_the_plugin_op():
    pieces = reg.current_registration().pieces()
    # The session runs against the real torch_npu when it loads here (see conftest.py).
    assert pieces.schema is (reg.Source.NATIVE if "torch_npu" in sys.modules else reg.Source.PLUGIN)
    assert pieces.kernels["CPU"] is reg.Source.PLUGIN
    assert pieces.fake is reg.Source.PLUGIN


def test_import_reload_and_register_again_change_nothing():
    before = reg.current_registration()
    importlib.reload(torchair_plugin)
    importlib.reload(reg)  # a fresh module: the registration is remembered outside it
    assert reg.register() is before
    assert torchair_plugin.registration_report() == before.sources()


def test_concurrent_registration_registers_once(monkeypatch):
    # As before the first registration: threads racing into register() must install once. The
    # installing step is slowed down so that they really overlap.
    from torchair_plugin._process_state import STATE

    monkeypatch.setattr(STATE, "registration", None)
    monkeypatch.setattr(reg, "_import_native_op_provider", lambda: None)
    installs = []

    def slow_register_now(options):
        installs.append(options)
        time.sleep(0.05)
        STATE.registration = object()
        return STATE.registration

    monkeypatch.setattr(reg, "_register_now", slow_register_now)
    results = []
    threads = [threading.Thread(target=lambda: results.append(reg.register(reg.Options()))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(installs) == 1 and len(results) == 8 and len({id(r) for r in results}) == 1


@pytest.fixture
def native_op():
    """An op shaped like torch_npu's: a device kernel and an unchecked meta, in its own library."""
    namespace = "tpl_native"
    library = torch.library.Library(namespace, "DEF")
    library.define("npu_moe_update_expert" + SCHEMA)
    library.impl("npu_moe_update_expert", lambda ids, table, **kw: (ids * 0 + 42, ids != ids), "CPU")

    def unchecked_meta(ids, table, **kw):
        return ids.new_empty(ids.shape), ids.new_empty(ids.shape, dtype=torch.bool)

    library.impl("npu_moe_update_expert", unchecked_meta, "Meta")
    yield f"{namespace}::npu_moe_update_expert", getattr(torch.ops, namespace).npu_moe_update_expert.default
    library._destroy()


def apply(qualname, options):
    """What register() does, for an op of the test's own namespace: the Registration and its Library."""
    state = reg.probe_op_state(qualname)
    plan = reg.plan_registration(state, options)
    library = reg.apply_plan(plan, qualname)
    return reg.Registration(qualname, state, plan, library, options), library


def bad_batch_under_fake(op):
    with FakeTensorMode() as mode:
        ids = mode.from_tensor(torch.zeros(600, 2, dtype=torch.int32))
        table = mode.from_tensor(torch.ones(4, 3, dtype=torch.int32))
        return op(ids, table, balance_mode=1)


def test_native_meta_is_replaced_and_native_kernel_kept(native_op):
    qualname, op = native_op
    bad_batch_under_fake(op)  # the native meta accepts BS=600 silently
    registration, library = apply(qualname, reg.Options())
    assert registration.pieces().kernels["CPU"] is reg.Source.NATIVE
    with pytest.raises(RuntimeError, match=r"BS = expert_ids.size\(0\) must be in \(0, 512\], got 600"):
        bad_batch_under_fake(op)
    ids = torch.zeros(2, 2, dtype=torch.int32)
    assert op(ids, torch.ones(4, 3, dtype=torch.int32), balance_mode=1)[0].tolist() == [[42, 42]] * 2
    reg.release_library(library)
    # Removing the library brings the native meta back (checked on meta tensors: FakeTensorMode
    # keeps calling a removed Python meta kernel it has run before, a torch 2.13 quirk of removal).
    meta_ids = torch.zeros(600, 2, dtype=torch.int32, device="meta")
    assert op(meta_ids, torch.ones(4, 3, dtype=torch.int32, device="meta"), balance_mode=1)[0].shape == (600, 2)


def test_older_torch_route_shadows_the_native_meta_with_a_meta_kernel(native_op):
    # torch < 2.8's register_fake refuses an op with a Meta kernel; the plugin then registers its
    # fake as a Meta kernel instead. That route runs for real here too.
    qualname, op = native_op
    plan = reg.plan_registration(reg.probe_op_state(qualname), reg.Options())
    library = reg.apply_plan(plan, qualname, fake_route=reg.FAKE_ROUTE_META_KERNEL)
    try:
        with pytest.raises(RuntimeError, match=r"BS = expert_ids.size\(0\) must be in \(0, 512\], got 600"):
            bad_batch_under_fake(op)
        meta_ids = torch.zeros(600, 2, dtype=torch.int32, device="meta")
        with pytest.raises(RuntimeError, match="got 600"):
            op(meta_ids, torch.ones(4, 3, dtype=torch.int32, device="meta"), balance_mode=1)
    finally:
        reg.release_library(library)
    meta_ids = torch.zeros(600, 2, dtype=torch.int32, device="meta")
    assert op(meta_ids, torch.ones(4, 3, dtype=torch.int32, device="meta"), balance_mode=1)[0].shape == (600, 2)


def test_opting_out_keeps_the_native_meta(native_op):
    qualname, op = native_op
    registration, library = apply(qualname, reg.Options(keep_native_fake=True))
    try:
        assert registration.pieces().fake is reg.Source.NATIVE
        assert bad_batch_under_fake(op)[0].shape == (600, 2)
    finally:
        reg.release_library(library)


def test_a_failing_step_leaves_nothing_behind():
    qualname = "tpl_rollback::npu_moe_update_expert"
    plan = reg.Plan(define_schema=True, install_fake=True, reference_keys=("CPU", "NotADispatchKey"))
    with pytest.raises(Exception):  # noqa: B017  (whatever torch raises for an unknown dispatch key)
        reg.apply_plan(plan, qualname)
    assert not reg.probe_op_state(qualname).schema_exists
    # and it can then be registered properly
    library = reg.apply_plan(reg.Plan(define_schema=True, install_fake=True, reference_keys=("CPU",)), qualname)
    try:
        assert reg.probe_op_state(qualname).kernel_keys >= {"CPU"}
    finally:
        reg.release_library(library)
