"""A new user's project, end to end, through the documented commands (docs/cann-less-ci.md).

A fresh directory gets a model (update_expert -> dispatch_v2 -> combine_v2, with a Parameter),
a conftest.py with the documented ``pytest_plugins`` line and golden-graph tests; then pytest
runs in a child process as the user would run it: goldens created, compared, the model changed
(a failure with a diff), goldens updated, compared again. Nothing in the project calls
``define_companion_ops``: capture must provide dispatch_v2/combine_v2 itself.

The child processes use this interpreter, or ``$TORCHAIR_PLUGIN_WALKTHROUGH_PYTHON`` (CI points it
at a fresh virtual environment with the wheel installed: .ci/run).
"""

import os
import pathlib
import subprocess
import sys

import pytest

from torchair_plugin.testing.pytest_plugin import require_ge_capture

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYTHON_VAR = "TORCHAIR_PLUGIN_WALKTHROUGH_PYTHON"

MODEL = '''\
import torch


class MoeLayer(torch.nn.Module):
    """Balance the routing, send tokens to their experts, combine what comes back, gate it."""

    def __init__(self, experts=16, world_size=4, rank=1):
        super().__init__()
        self.experts, self.world_size, self.rank = experts, world_size, rank
        self.gate = torch.nn.Parameter(torch.ones(experts))

    def forward(self, expert_ids, eplb_table, expert_scales, x):
        ids, mask = torch.ops.npu.npu_moe_update_expert(
            expert_ids, eplb_table, local_rank_id=self.rank, world_size=self.world_size
        )
        expand_x, _, assist_info, _, recv_counts, _, _ = torch.ops.npu.npu_moe_distribute_dispatch_v2(
            x, ids, "ep", self.world_size, self.rank, self.experts, x_active_mask=mask
        )
        out = torch.ops.npu.npu_moe_distribute_combine_v2(
            expand_x, ids, assist_info, recv_counts, expert_scales, "ep", self.world_size, self.rank,
            self.experts, x_active_mask=mask,
        )
        return out.float() * self.gate[expert_ids[:, 0].long()][:, None]


def example_inputs(bs=8, k=4, experts=16, world_size=4, hidden=32):
    table = torch.zeros(experts, world_size + 1, dtype=torch.int32)
    table[:, 0], table[:, 1] = 1, torch.arange(experts, dtype=torch.int32)
    return (
        torch.randint(0, experts, (bs, k), dtype=torch.int32),
        table,
        torch.rand(bs, k),
        torch.randn(bs, hidden, dtype=torch.bfloat16),
    )
'''
CONFTEST = 'pytest_plugins = ["torchair_plugin.testing.pytest_plugin"]\n'
TESTS = """\
from my_model import MoeLayer, example_inputs
from torchair_plugin.testing import capture_ge_graphs
from torchair_plugin.testing.pytest_plugin import require_ge_capture

require_ge_capture()


def test_graph_static(ge_golden):
    result = capture_ge_graphs(MoeLayer(), *example_inputs())
    assert result.fx_graph_count == 1 and result.graph_breaks == 0, result.summary()
    ge_golden.check(result.graph, "moe_layer_static")


def test_graph_dynamic(ge_golden):
    result = capture_ge_graphs(MoeLayer(), *example_inputs(), dynamic=True)
    ge_golden.check(result.graph, "moe_layer_dynamic")
"""
# One capture outside pytest, printing what the checks below read.
CAPTURE = """\
import sys

import torchair_plugin
from my_model import MoeLayer, example_inputs
from torchair_plugin.testing import capture_ge_graphs

result = capture_ge_graphs(MoeLayer(), *example_inputs(), dynamic=True, training=sys.argv[1:] == ["training"])
print("installed at", torchair_plugin.__file__)
print("ops", " ".join(result.graph.op_types()))
print("netoutput inputs", len(result.graph.ops_of_type("NetOutput")[0].inputs))
"""


def _python():
    return os.environ.get(PYTHON_VAR) or sys.executable


def _run(project, *args):
    # The user's environment: none of this suite's own settings.
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "TORCH_DEVICE_BACKEND_AUTOLOAD",
            "TORCHAIR_PLUGIN_UPDATE_GOLDENS",
            "TORCHAIR_PLUGIN_CAPTURE_STRICT",
            "PYTHONPATH",
        )
    }
    done = subprocess.run([_python(), *args], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
def project(tmp_path):
    require_ge_capture()
    (tmp_path / "my_model.py").write_text(MODEL)
    (tmp_path / "capture_once.py").write_text(CAPTURE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text(CONFTEST)
    (tmp_path / "tests" / "test_my_model_graph.py").write_text(TESTS)
    return tmp_path


@pytest.mark.slow
def test_companion_ops_and_an_inference_graph_without_asking(project):
    code, out, err = _run(project, "capture_once.py")
    assert code == 0, (out + err)[-3000:]
    ops = out.split("ops ", 1)[1].splitlines()[0].split()
    assert ops.index("MoeUpdateExpert") < ops.index("MoeDistributeDispatchV2") < ops.index("MoeDistributeCombineV2")
    assert "netoutput inputs 1" in out  # the inference graph: the layer's one output
    assert "backward" not in err, err[-2000:]  # no attempt to compile a backward
    if os.environ.get(PYTHON_VAR):  # the install under test, not this checkout
        assert str(ROOT) not in out.split("installed at ", 1)[1].splitlines()[0], out
    code, out, err = _run(project, "capture_once.py", "training")
    assert code == 0 and "netoutput inputs 1\n" not in out, (out + err)[-3000:]


@pytest.mark.slow
def test_goldens_created_compared_changed_and_updated(project):
    goldens = project / "tests" / "goldens"
    code, out, err = _run(project, "-m", "pytest", "tests", "--update-goldens", "-p", "no:cacheprovider")
    assert code == 0 and "goldens: wrote or removed 2 file(s)" in out, (out + err)[-3000:]
    first = {p.name: p.read_text() for p in goldens.glob("*.txt")}
    assert set(first) == {"moe_layer_static.txt", "moe_layer_dynamic.txt"}
    assert "MoeDistributeCombineV2" in first["moe_layer_static.txt"]

    code, out, err = _run(project, "-m", "pytest", "tests", "--ge-capture-strict", "-p", "no:cacheprovider")
    assert code == 0 and "2 passed" in out, (out + err)[-3000:]

    # The change under review: the layer now returns bfloat16 (one more Cast in the graph).
    model = project / "my_model.py"
    model.write_text(
        MODEL.replace("[:, None]\n", "[:, None]).to(torch.bfloat16)\n").replace(
            "return out.float()", "return (out.float()"
        )
    )
    code, out, err = _run(project, "-m", "pytest", "tests", "--ge-capture-strict", "-p", "no:cacheprovider")
    assert code == 1 and "2 failed" in out, (out + err)[-3000:]
    assert "GE graph differs from" in out and "+  out 0 y: DT_BF16" in out, out[-3000:]

    code, out, err = _run(project, "-m", "pytest", "tests", "--update-goldens", "-p", "no:cacheprovider")
    assert code == 0 and "goldens: wrote or removed 2 file(s)" in out, (out + err)[-3000:]
    assert all(first[p.name] != p.read_text() for p in goldens.glob("*.txt"))

    code, out, err = _run(project, "-m", "pytest", "tests", "--ge-capture-strict", "-p", "no:cacheprovider")
    assert code == 0 and "2 passed" in out, (out + err)[-3000:]
