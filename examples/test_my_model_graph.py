"""Template: GE-graph regression tests for your own model, in ordinary CI (no NPU, no CANN).

Copy this file into your tests/ folder, put the line below in your tests/conftest.py, replace
``MyMoeLayer`` and ``example_inputs`` with yours, then create the golden files once:

    # tests/conftest.py
    pytest_plugins = ["torchair_plugin.testing.pytest_plugin"]

    pytest tests/test_my_model_graph.py --update-goldens   # writes tests/goldens/*.txt
    git add tests/goldens                                     # review the diff, commit

From then on a change that alters the GE graph torchair builds (an extra Cast, a graph break, a
recompile, a lost optional input) fails the test with a diff. In CI run pytest with
``--ge-capture-strict``, so that an image where capture cannot run fails instead of skipping.
Captures are inference graphs (``torch.no_grad()``); pass ``training=True`` for the training
forward. Models calling dispatch_v2 / combine_v2 need no extra setup. See docs/cann-less-ci.md.
"""

import torchair_plugin  # noqa: F401  (first: registers the op and its GE converter, prepares torch)
import torch
from torchair_plugin.testing import GraphCapture, capture_ge_graphs
from torchair_plugin.testing.pytest_plugin import require_ge_capture

require_ge_capture()  # skips this module, saying what to install, where capture cannot run


class MyMoeLayer(torch.nn.Module):
    """Stand-in for your model: route tokens through npu_moe_update_expert, then use the result."""

    def __init__(self, world_size: int = 4, rank: int = 1) -> None:
        super().__init__()
        self.world_size, self.rank = world_size, rank

    def forward(self, expert_ids, eplb_table, expert_scales, pruning_threshold):
        balanced_ids, mask = torch.ops.npu.npu_moe_update_expert(
            expert_ids,
            eplb_table,
            expert_scales=expert_scales,
            pruning_threshold=pruning_threshold,
            local_rank_id=self.rank,
            world_size=self.world_size,
        )
        return balanced_ids, expert_scales * mask


def example_inputs(bs: int = 8, k: int = 4, experts: int = 16, world_size: int = 4):
    table = torch.zeros(experts, world_size + 1, dtype=torch.int32)
    table[:, 0], table[:, 1] = 1, torch.arange(experts, dtype=torch.int32)
    return (
        torch.randint(0, experts, (bs, k), dtype=torch.int32),
        table,
        torch.rand(bs, k),
        torch.full((k,), 0.05),
    )


def test_graph_static(ge_golden):
    result = capture_ge_graphs(MyMoeLayer(), *example_inputs())
    assert result.fx_graph_count == 1 and result.graph_breaks == 0, result.summary()  # no graph break
    ge_golden.check(result.graph, "my_moe_layer_static")


def test_graph_dynamic_batch(ge_golden):
    # BS is dim 0 of expert_ids (arg 0) and expert_scales (arg 2).
    result = capture_ge_graphs(MyMoeLayer(), *example_inputs(), mark_dynamic={0: 0, 2: 0})
    ge_golden.check(result.graph, "my_moe_layer_dynamic_bs")


def test_no_recompile_across_batch_sizes():
    capture = GraphCapture(MyMoeLayer(), dynamic=True)
    for bs in (2, 8, 64, 512):
        capture(*example_inputs(bs=bs))
    assert capture.result.fx_graph_count == 1 and len(capture.result.graphs) == 1, capture.result.summary()
