"""torchair's reduce-overhead (aclgraph) mode and torch_npu's npugraph_ex backend, as far as a
machine without an NPU goes: both trace through the plugin's fake kernel (the GE converter is not
theirs), so a bad shape fails at trace time, and a good one gets as far as the device."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

import torchair_plugin  # noqa: F401  (registers the op)
from torchair_plugin.testing import Mode, current_mode

ROOT = pathlib.Path(__file__).resolve().parents[1]

# One process for both backends: each good call reaches the device, which the CANN stubs refuse
# (torch_npu raises, the process lives on, and the next backend reaches it again).
CHILD = """
import sys
import torchair_plugin
from torchair_plugin.testing import import_torchair
torchair = import_torchair()
import torch

def route(ids, table):
    return torch.ops.npu.npu_moe_update_expert(ids, table, local_rank_id=0, world_size=8)

table = torch.tensor([[1, e, -1] for e in range(16)], dtype=torch.int32)
for name in sys.argv[1:]:
    if name == "npugraph_ex":
        backend = "npugraph_ex"
    else:
        config = torchair.CompilerConfig()
        config.mode = "reduce-overhead"
        backend = torchair.get_npu_backend(compiler_config=config)
    torch._dynamo.reset()  # each backend traces from scratch, with static shapes
    for k in (17, 8):
        try:
            torch.compile(route, backend=backend, fullgraph=True)(torch.zeros(4, k, dtype=torch.int32), table)
        except Exception as error:
            print(name, "K", k, "raised", type(error).__name__, str(error).replace("\\n", " "), flush=True)
"""


def test_the_fake_kernel_traces_with_symbolic_batch():
    """What aot_autograd does in every torch.compile backend: trace on fake tensors."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def route(ids, table):
        return torch.ops.npu.npu_moe_update_expert(ids, table, local_rank_id=1, world_size=4)

    table = torch.tensor([[1, e, -1] for e in range(8)], dtype=torch.int32)
    graph = make_fx(route, tracing_mode="symbolic")(torch.zeros(5, 4, dtype=torch.int32), table)
    (node,) = [n for n in graph.graph.nodes if n.target is torch.ops.npu.npu_moe_update_expert.default]
    ids_out, mask_out = node.meta["val"]
    assert str(ids_out.shape[0]).startswith("s") and ids_out.shape[1] == 4
    assert (ids_out.dtype, mask_out.dtype) == (torch.int32, torch.bool)
    with pytest.raises(RuntimeError, match=r"K = expert_ids.size\(1\) must be in \(0, 16\], got 17"):
        make_fx(route, tracing_mode="symbolic")(torch.zeros(5, 17, dtype=torch.int32), table)


def test_torchair_offers_the_modes_the_docs_name():
    # The suite's install has torch-npu (the capture extra), so torchair is always importable.
    from torchair_plugin.testing import import_torchair

    config = import_torchair().CompilerConfig()
    for mode in ("max-autotune", "reduce-overhead"):
        config.mode = mode
        assert config.mode.value == mode
    # npugraph_ex is a mode of newer torchair only (torch-npu 2.6's offers the two above); where
    # it is offered, it must be the mode the docs describe.
    try:
        config.mode = "npugraph_ex"
    except ValueError as exc:
        assert "npugraph_ex" in str(exc) and "reduce-overhead" in str(exc)
    else:
        assert config.mode.value == "npugraph_ex"


BACKENDS = ("reduce-overhead", "npugraph_ex")


def test_aclgraph_backends_reject_a_bad_shape_at_trace_time_and_reach_the_device_with_a_good_one():
    if current_mode() is not Mode.REAL_TORCH_NPU:
        pytest.skip("needs the real torch_npu over CANN stubs (its backends), not an NPU")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *BACKENDS], env=env, capture_output=True, text=True, timeout=300
    )
    report = done.stdout + done.stderr[-2000:]
    assert done.returncode == 0, report
    for backend in BACKENDS:
        lines = [
            line for line in done.stdout.splitlines() if line.startswith(f"{backend} K ")
        ]  # not torch_npu's warnings
        assert len(lines) == 2, report
        assert lines[0].startswith(f"{backend} K 17 raised TorchRuntimeError"), report
        assert "npu_moe_update_expert: K = expert_ids.size(1) must be in (0, 16], got 17" in lines[0]
        # The good shape traced through the fake kernel and went on to run on the device.
        assert lines[1].startswith(f"{backend} K 8 raised"), report
    # Both reached it: the stubs log every refused aclInit.
    assert done.stderr.count("CANN function aclInit was called") == len(BACKENDS), report
