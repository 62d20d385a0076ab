"""Acceptance on a real Ascend A2/A3 box (torch_npu and CANN real): ``pytest -m npu tests/npu``.

Skipped everywhere else. The comparison logic is exercised on CPU by tests/test_acceptance_logic.py.
When a test fails, send back the whole pytest output: it holds torchair-plugin's mismatch report
(each failing case's parameters and seed) and the versions in the header.
"""

import os
import sys

import pytest
import torch

import torchair_plugin
from torchair_plugin import npu_moe_update_expert_reference as reference
from torchair_plugin.testing.acceptance import build_case, compare, corpus, mismatch_report


def _npu_available():
    return "torch_npu" in sys.modules and torch.npu.is_available()


pytestmark = [pytest.mark.npu, pytest.mark.skipif(not _npu_available(), reason="needs a real Ascend NPU with CANN")]


def native(*args, **kwargs):
    return torch.ops.npu.npu_moe_update_expert(*args, **kwargs)


def test_native_kernel_matches_the_reference_on_the_corpus():
    assert torchair_plugin.registration_report()["kernels"]["PrivateUse1"] == "native"
    found = compare(
        native, reference, corpus(seed=int(os.environ.get("TORCHAIR_PLUGIN_ACCEPTANCE_SEED", "0"))), device="npu"
    )
    assert not found, mismatch_report(found)


def test_compiled_graph_matches_eager_and_dynamic_batch_compiles_once():
    import torchair

    backend = torchair.get_npu_backend(compiler_config=torchair.CompilerConfig())
    compiled = torch.compile(native, backend=backend, dynamic=True)
    for case in list(corpus(seed=3, size=8)):
        args, kwargs = build_case(case)
        args = tuple(a.npu() for a in args)
        kwargs = {k: v.npu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        want = native(*args, **kwargs)
        got = compiled(*args, **kwargs)
        for w, g in zip(want, got):
            assert torch.equal(w.cpu(), g.cpu()), case


@pytest.mark.skipif(not _npu_available() or torch.npu.device_count() < 2, reason="needs 2+ NPUs")
def test_chain_on_two_ranks_with_hccl():
    """The documented example, update -> dispatch_v2 -> combine_v2 in one GE graph, on 2 ranks."""
    import subprocess

    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "graph_mode_ascend.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", example],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("max |out - x * kept weight|") == 2, proc.stdout
