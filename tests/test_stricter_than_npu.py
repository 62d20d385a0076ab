"""Where the plugin refuses what the NPU accepts, on purpose (docs/op.md, "Where the plugin is
stricter than the NPU"), and the opt-out that gives torch_npu's behaviour back."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import torchair_plugin  # noqa: F401  (registers the op)
from torchair_plugin.testing import Mode, current_mode

ROOT = pathlib.Path(__file__).resolve().parents[1]
op = torch.ops.npu.npu_moe_update_expert


@pytest.mark.parametrize("rank", range(8))
def test_a_count_above_f_minus_1_is_refused_on_every_rank(rank):
    """[[5, 7, 8]]: the NPU reads slot rank // ceil(8 / 5) + 1, inside the row on ranks 0-3 (rank 0
    gets 7) and past it on ranks 4-7. The reference kernel refuses the table on every rank."""
    table = torch.tensor([[5, 7, 8]], dtype=torch.int32)
    with pytest.raises(
        ValueError,
        match=r"eplb_table\[0, 0\] \(replica count of logical expert 0\) "
        r"must be in \[1, F-1=2\], got 5",
    ):
        op(torch.zeros(1, 1, dtype=torch.int32), table, local_rank_id=rank, world_size=8)


def test_an_unused_experts_bad_count_is_not_read():
    """Only experts in use are refused, as only they are read: the same row passes when unused."""
    table = torch.tensor([[5, 7, 8], [1, 3, -1]], dtype=torch.int32)
    ids, _ = op(torch.ones(2, 1, dtype=torch.int32), table, local_rank_id=0, world_size=8)
    assert ids.tolist() == [[3], [3]]


def _bf16_threshold_call():
    ids = torch.zeros(2, 2, dtype=torch.int32)
    table = torch.tensor([[1, 0, -1], [1, 1, -1]], dtype=torch.int32)
    return op(
        ids,
        table,
        expert_scales=torch.ones(2, 2),
        pruning_threshold=torch.zeros(2, dtype=torch.bfloat16),
        local_rank_id=0,
        world_size=2,
    )


def test_a_bfloat16_threshold_fails_at_trace_time():
    """The NPU's tiling rejects it on the device (561002); the plugin's fake kernel says so while tracing."""
    with FakeTensorMode(), pytest.raises(RuntimeError, match=r"pruning_threshold.dtype must be float32, got bfloat16"):
        _bf16_threshold_call()


def test_torch_npus_meta_accepts_it_with_the_opt_out():
    """TORCHAIR_PLUGIN_NATIVE_FAKE=1 keeps torch_npu's meta, which checks nothing: the trace passes."""
    if current_mode() not in (Mode.REAL_TORCH_NPU, Mode.NATIVE):
        pytest.skip("needs torch_npu's own meta function (the real torch_npu, over CANN stubs or with CANN)")
    code = (
        "import torchair_plugin\n"
        "from torchair_plugin.testing import import_torchair\n"
        "import_torchair()\n"
        "import torch\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "import test_stricter_than_npu as t\n"
        "with FakeTensorMode():\n"
        "    ids, mask = t._bf16_threshold_call()\n"
        "print('fake:', torchair_plugin.registration_report()['fake'], tuple(ids.shape), mask.dtype)\n"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), TORCHAIR_PLUGIN_NATIVE_FAKE="1"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fake: native (kept: TORCHAIR_PLUGIN_NATIVE_FAKE=1) (2, 2) torch.bool" in done.stdout
