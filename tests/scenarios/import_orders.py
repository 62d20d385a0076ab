"""Import-order scenarios against the real torch_npu over CANN stubs, one per fresh process.

Run as ``python import_orders.py SCENARIO``; prints one JSON line. The stub libraries' paths come
in ``TPL_STUBS`` (os.pathsep-separated; the all-symbols library first), built by the test.
"""

import ctypes
import json
import os
import sys


def preload_stubs():
    for path in os.environ["TPL_STUBS"].split(os.pathsep):
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def report():
    import torchair_plugin

    return torchair_plugin.registration_report()


def run_op(op=None):
    import torch

    op = op or torch.ops.npu.npu_moe_update_expert
    table = torch.tensor([[2, 0, 2], [1, 1, -1], [1, 3, -1]], dtype=torch.int32)
    ids, _ = op(torch.tensor([[0, 1], [0, 2]]), table, local_rank_id=1, world_size=2)
    return ids.tolist()


def saved_handles():
    """The op's handles as a user keeps them (a module-level ``op = torch.ops...``)."""
    import torch

    return torch.ops.npu.npu_moe_update_expert, torch.ops.npu.npu_moe_update_expert.default


def run_saved(handles):
    """Each saved handle's result: the op re-defined under them must not free what they point to
    (it did: std::bad_alloc, a read of freed memory)."""
    return [run_op(handle) for handle in handles]


def fake_message():
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        ids = mode.from_tensor(torch.zeros(2, 2, dtype=torch.int64))
        table = mode.from_tensor(torch.zeros(3, 3, dtype=torch.int32))
        try:
            torch.ops.npu.npu_moe_update_expert(ids, table, local_rank_id=0, world_size=1)
        except Exception as exc:  # the plugin's validating fake names the parameter
            return str(exc).splitlines()[0]
    return "no error"


def load_torchair():
    import torchair

    torchair.CompilerConfig  # the lazy proxy loads the real package


def capture_converter_module():
    import torch
    from torchair_plugin.testing import capture_ge_graphs

    ids, table = torch.zeros(2, 2, dtype=torch.int32), torch.ones(4, 3, dtype=torch.int32)
    capture_ge_graphs(lambda i, t: torch.ops.npu.npu_moe_update_expert(i, t, balance_mode=1), ids, table)
    converter = torch.ops.npu.npu_moe_update_expert.default._ge_converter  # read after: the op may be new
    return getattr(converter, "__wrapped__", converter).__module__


def plugin_then_torch_npu():
    import torchair_plugin  # noqa: F401
    from torchair_plugin.testing import current_mode

    before = report()
    handles = saved_handles()
    preload_stubs()
    import torch_npu  # noqa: F401  (was a C++ terminate: the schema defined twice)

    after = report()
    load_torchair()
    after_torchair = report()
    module = capture_converter_module()  # capture in this process takes the torch_npu it finds
    return {
        "saved_handles": run_saved(handles),
        "before": before,
        "after": after,
        "after_torchair": after_torchair,
        "op": run_op(),
        "fake": fake_message(),
        "mode": current_mode().name,
        "module": module,
    }


def torch_npu_then_plugin():
    import torch  # noqa: F401

    preload_stubs()
    import torch_npu  # noqa: F401
    import torchair_plugin  # noqa: F401

    after = report()
    load_torchair()
    return {"after": after, "after_torchair": report(), "op": run_op(), "fake": fake_message()}


def torchair_then_plugin():
    import torch  # noqa: F401

    preload_stubs()
    import torch_npu  # noqa: F401

    load_torchair()
    import torchair_plugin  # noqa: F401

    return {"after": report(), "op": run_op(), "fake": fake_message()}


def autoloaded_by_import_torch():
    import torch  # noqa: F401  (torch auto-loads the torch_npu backend (TORCH_DEVICE_BACKEND_AUTOLOAD=1))

    loaded = "torch_npu" in sys.modules
    import torchair_plugin  # noqa: F401

    return {"autoloaded": loaded, "after": report(), "op": run_op(), "fake": fake_message()}


def failed_torch_npu_then_retry():
    import torchair_plugin  # noqa: F401

    handles = saved_handles()
    try:
        import torch_npu  # noqa: F401  (no stubs loaded: fails like a machine without CANN)

        first = "imported"
    except Exception as exc:
        first = type(exc).__name__
    after_failure = report()
    op_after_failure = run_op()
    saved_after_failure = run_saved(handles)
    preload_stubs()
    import torch_npu  # noqa: F401,F811

    return {
        "saved_after_failure": saved_after_failure,
        "saved_handles": run_saved(handles),
        "first": first,
        "after_failure": after_failure,
        "op_after_failure": op_after_failure,
        "after_retry": report(),
        "op": run_op(),
        "fake": fake_message(),
    }


def plugin_first_capture():
    import torchair_plugin  # noqa: F401
    from torchair_plugin.testing import current_mode

    module = capture_converter_module()
    return {"mode": current_mode().name, "module": module, "after": report()}


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()))
