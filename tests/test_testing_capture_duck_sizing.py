"""Issue 21: with dynamic=True, a first batch whose size equals another input's size (BS == K = 8,
the seed example's numbers) is given one symbol with it by Dynamo's duck sizing, and the next
batch size recompiles. The capture names that reason; mark_dynamic gives the graph production gets."""

import pytest
import torch

from torchair_plugin.testing import GraphCapture
from torchair_plugin.testing.pytest_plugin import require_ge_capture

K = 8
TABLE = torch.tensor([[1, e] for e in range(16)], dtype=torch.int32)
THRESHOLD = torch.full((K,), 0.01)


def model(x, table, threshold):
    top = torch.topk(x.softmax(-1), K, dim=-1)
    return torch.ops.npu.npu_moe_update_expert(
        top.indices.to(torch.int32), table, expert_scales=top.values, pruning_threshold=threshold, balance_mode=1
    )


@pytest.fixture(autouse=True)
def _capture():
    require_ge_capture()


def _capture_batches(**call_options):
    capture = GraphCapture(model, dynamic=True)
    for bs in (8, 64, 200):
        capture(torch.randn(bs, 16), TABLE, THRESHOLD, **call_options)
    return capture.result


def test_bs_equal_to_k_recompiles_and_the_reason_names_duck_sizing():
    result = _capture_batches()
    assert result.fx_graph_count == 2
    (reason,) = result.recompile_reasons
    assert "tensor 'x' size mismatch at index 0. expected 8, actual 64" in reason
    assert "duck sizing: on the first call x.size(0) = 8 equalled threshold.size(0)" in reason
    assert "mark_dynamic={0: 0}" in reason


def test_marking_the_batch_dim_gives_one_graph_for_every_batch_size():
    result = _capture_batches(mark_dynamic={0: 0})
    assert result.fx_graph_count == 1 and result.recompile_reasons == []


def test_a_static_capture_recompiles_for_a_new_size_without_blaming_duck_sizing():
    capture = GraphCapture(model, dynamic=False)
    for bs in (8, 64):
        capture(torch.randn(bs, 16), TABLE, THRESHOLD)
    assert capture.result.recompile_reasons and all("duck sizing" not in r for r in capture.result.recompile_reasons)


def test_a_first_batch_that_collides_with_nothing_gives_one_graph():
    capture = GraphCapture(model, dynamic=True)
    for bs in (5, 64, 200):
        capture(torch.randn(bs, 16), TABLE, THRESHOLD)
    assert capture.result.fx_graph_count == 1
