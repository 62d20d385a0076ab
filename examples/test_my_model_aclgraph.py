"""Template: graph regression tests for a model served with aclgraph (torchair ``mode="reduce-overhead"``
or the ``npugraph_ex`` backend), in ordinary CI (no NPU, no CANN).

Copy this file into your tests/ folder, put the line below in your tests/conftest.py, replace
``MyMoeLayer`` and ``example_inputs`` with yours, then create the golden files once:

    # tests/conftest.py
    pytest_plugins = ["torchair_plugin.testing.pytest_plugin"]

    pytest tests/test_my_model_aclgraph.py --update-goldens   # writes tests/goldens/*.txt

The capture takes the FX graph torchair would record into an ACL graph (after its own passes),
without a device. The tests below fail when that graph changes (golden), when a host sync lands in
the captured region (``.item()``, a data-dependent shape: capture fails or is split on the NPU),
when the EPLB table stops being a static input, or when a rebound table would be read stale.
See docs/cann-less-ci.md.
"""

import torchair_plugin  # noqa: F401  (first: registers the op, prepares torch)
import torch
from torchair_plugin.testing import AclGraphCapture, capture_aclgraph_graphs
from torchair_plugin.testing.pytest_plugin import require_aclgraph_capture

require_aclgraph_capture("reduce-overhead")  # skips, saying why, where this torch-npu cannot capture it


class MyMoeLayer(torch.nn.Module):
    """Stand-in for your model: the EPLB table is a buffer, updated in place by the rebalancer."""

    def __init__(self, experts: int = 16, world_size: int = 4, rank: int = 1) -> None:
        super().__init__()
        table = torch.zeros(experts, world_size + 1, dtype=torch.int32)
        table[:, 0], table[:, 1] = 1, torch.arange(experts, dtype=torch.int32)
        self.register_buffer("eplb_table", table)
        self.world_size, self.rank = world_size, rank

    def forward(self, expert_ids, expert_scales):
        balanced_ids, mask = torch.ops.npu.npu_moe_update_expert(
            expert_ids, self.eplb_table, local_rank_id=self.rank, world_size=self.world_size
        )
        return balanced_ids, expert_scales * mask


class MyMoeLayerWithASync(MyMoeLayer):
    """The same layer with a bug aclgraph users hit: a device-to-host read in the captured region."""

    def forward(self, expert_ids, expert_scales):
        balanced_ids, mask = super().forward(expert_ids, expert_scales)
        kept = int(mask.sum().item())  # host sync: the NPU cannot capture this
        return balanced_ids, expert_scales / kept


def example_inputs(bs: int = 8, k: int = 4, experts: int = 16):
    return torch.randint(0, experts, (bs, k), dtype=torch.int32), torch.rand(bs, k)


def test_graph_static(ge_golden):
    result = capture_aclgraph_graphs(MyMoeLayer(), *example_inputs())
    assert result.fx_graph_count == 1 and result.graph_breaks == 0, result.summary()
    ge_golden.check(result.graph, "my_moe_layer_aclgraph_static")


def test_no_host_sync_in_the_captured_region():
    result = capture_aclgraph_graphs(MyMoeLayer(), *example_inputs())
    assert not result.host_syncs, result.summary()


def test_the_host_sync_is_caught_with_its_line():
    # What test_no_host_sync_in_the_captured_region reports for the buggy layer (here inverted, so
    # that the template passes): the op or graph break, and the line of your code behind it.
    result = capture_aclgraph_graphs(MyMoeLayerWithASync(), *example_inputs())
    assert [sync.source.code for sync in result.host_syncs] == [
        "kept = int(mask.sum().item())  # host sync: the NPU cannot capture this"
    ]


def test_the_eplb_table_is_read_by_address():
    # aclgraph replays read a static input at its captured address: the rebalancer must copy_ into
    # the table, never rebind it (model.eplb_table = new).
    assert capture_aclgraph_graphs(MyMoeLayer(), *example_inputs()).graph.static_inputs == ["self.eplb_table"]


def test_updating_the_table_in_place_keeps_the_graph():
    model = MyMoeLayer()
    capture = AclGraphCapture(model, dynamic=True)
    for bs in (2, 8, 64):
        capture(*example_inputs(bs=bs))
        model.eplb_table.copy_(model.eplb_table.roll(1, 0))  # a rebalance, in place
    assert capture.result.fx_graph_count == 1 and not capture.result.static_input_changes, capture.result.summary()
