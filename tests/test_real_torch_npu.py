"""The suite's Ascend side against the real torch_npu, loaded over CANN stubs (conftest.py)."""

import importlib.metadata
import sys

import pytest
import torch

import torchair_plugin
from torchair_plugin.testing import Mode, _stubs, current_mode, stub_libraries
from torchair_plugin.testing._torchair_import import native_modules

pytestmark = pytest.mark.skipif(
    current_mode() is not Mode.REAL_TORCH_NPU, reason="needs the real torch_npu loadable over CANN stubs"
)


def test_the_real_torch_npu_provides_the_op_and_the_plugin_adds_its_pieces():
    assert "torch_npu" in sys.modules
    report = torchair_plugin.registration_report()
    assert report["schema"] == "native" and report["kernels"]["PrivateUse1"] == "native"
    assert report["fake"] == "torchair_plugin (validating fake kernel)"
    assert report["kernels"]["CPU"] == "torchair_plugin (reference kernel)"  # torch_npu has none
    assert report["converter"] == "torchair_plugin"


def test_the_stubs_answer_no_device():
    assert torch.npu.is_available() is False
    assert torch.npu.device_count() == 0


def test_the_companion_ops_are_torch_npus_own():
    for name in ("npu_moe_distribute_dispatch_v2", "npu_moe_distribute_combine_v2"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"npu::{name}", "PrivateUse1")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"npu::{name}", "CPU")  # capture's zeros


def test_opcheck_with_the_real_torch_npu_loaded():
    table = torch.tensor([[2, 0, 2], [1, 1, -1], [1, 3, -1]], dtype=torch.int32)
    ids = torch.tensor([[0, 1], [0, 2]])
    scales = torch.tensor([[0.7, 0.3], [0.5, 0.5]])
    threshold = torch.tensor([0.1, 0.4])
    torch.library.opcheck(
        torch.ops.npu.npu_moe_update_expert.default,
        (ids, table),
        dict(expert_scales=scales, pruning_threshold=threshold, local_rank_id=1, world_size=2),
    )


def test_the_real_plan_never_stubs_libtorch_npu():
    plan = _stubs.plan_stubs(native_modules(real_torch_npu=True))
    assert "libtorch_npu.so" not in plan.missing_sonames
    assert "aclrtGetDeviceCount" in plan.symbols
    assert all(lib.name != "libtorch_npu.so" for lib in stub_libraries().libraries())


def test_a_device_call_fails_loudly_naming_the_cann_function_and_the_process_lives(capfd):
    # In this very process: device initialisation is refused (an exception), not an abort.
    with pytest.raises(RuntimeError):
        torch.npu.set_device(0)
    assert "torchair_plugin.testing: CANN function aclInit was called" in capfd.readouterr().err
    # torch_npu's inductor hook asks for the current device while hashing any graph: that used to
    # end the process in the fatal stub. Now inductor compiles CPU graphs next to the real
    # torch_npu, or (torch_npu 2.8, whose hook needs an NPU triton driver) fails inside that hook.
    import traceback

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x * 2, backend="inductor")
    try:
        if importlib.metadata.version("torch-npu").startswith("2.8."):
            with pytest.raises(Exception) as failure:  # noqa: PT011  (whatever torch_npu's hook raises)
                compiled(torch.ones(2))
            assert "torch_npu/_inductor" in "".join(traceback.format_exception(failure.value))
        else:
            assert compiled(torch.ones(2)).tolist() == [2.0, 2.0]
    finally:
        torch._dynamo.reset()
