"""torchair_plugin.testing.capture: real torchair lowering of ordinary torch ops, no NPU."""

import pytest
import torch

from torchair_plugin.testing import GraphCapture, capture_ge_graphs, lower_fx
from torchair_plugin.testing.pytest_plugin import require_ge_capture

torchair = require_ge_capture()


def matmul_add(x, w):
    return torch.matmul(x, w) + 1, torch.add(x, x, alpha=2)


def _inputs(bs=3):
    return torch.randn(bs, 4), torch.randn(4, 5)


def _shapes(graph, op_type):
    return [out.shape for op in graph.ops_of_type(op_type) for out in op.outputs]


def test_static_capture_has_one_graph_and_static_shapes():
    x, w = _inputs()
    result = capture_ge_graphs(matmul_add, x, w)
    assert result.fx_graph_count == 1
    assert result.graph_breaks == 0
    graph = result.graph
    # Data ops in the order of the inputs' names (w, x), whatever order Dynamo gave them
    assert graph.op_types() == ["Data", "Data", "Const", "Const", "MatMul", "AxpyV2", "Add", "NetOutput"]
    assert _shapes(graph, "MatMul") == [[3, 5]]
    matmul = graph.ops_of_type("MatMul")[0]
    assert [i.source for i in matmul.inputs[:2]] == ["Data(x):0", "Data(w):0"]
    # The function really ran (eagerly, through the FX graph).
    expected = matmul_add(x, w)
    torch.testing.assert_close(result.outputs[0], expected[0])
    torch.testing.assert_close(result.outputs[1], expected[1])


def test_mark_dynamic_makes_only_that_dim_dynamic():
    result = capture_ge_graphs(matmul_add, *_inputs(), mark_dynamic={0: 0})
    assert result.fx_graph_count == 1
    assert _shapes(result.graph, "Data") == [[4, 5], [-1, 4]]  # Data(w), Data(x)
    assert _shapes(result.graph, "MatMul") == [[-1, 5]]


def test_dynamic_true_makes_every_dim_dynamic():
    result = capture_ge_graphs(matmul_add, *_inputs(), dynamic=True)
    assert result.fx_graph_count == 1
    assert _shapes(result.graph, "Data") == [[-1, -1], [-1, -1]]
    assert _shapes(result.graph, "AxpyV2") == [[-1, -1]]


def test_dynamic_true_compiles_once_across_batch_sizes():
    capture = GraphCapture(matmul_add, dynamic=True)
    for bs in (2, 3, 17, 512):
        capture(*_inputs(bs))
    assert capture.result.fx_graph_count == 1
    assert len(capture.result.graphs) == 1


def test_static_recompiles_per_shape():
    capture = GraphCapture(matmul_add, dynamic=False)
    for bs in (2, 3):
        capture(*_inputs(bs))
    assert capture.result.fx_graph_count == 2
    assert [_shapes(g, "MatMul") for g in capture.result.graphs] == [[[2, 5]], [[3, 5]]]


def test_graph_break_shows_as_two_fx_graphs():
    def broken(x):
        y = x + 1
        torch._dynamo.graph_break()
        return y * 2

    result = capture_ge_graphs(broken, torch.randn(2, 2))
    assert result.fx_graph_count == 2
    assert result.graph_breaks >= 1
    with pytest.raises(AssertionError, match="exactly one GE graph, captured 2"):
        result.graph


def test_raw_graph_def_and_renderings():
    graph = capture_ge_graphs(matmul_add, *_inputs()).graph
    assert type(graph.graph_def).__name__ == "GraphDef"
    assert [op.type for op in graph.graph_def.op][-1] == "NetOutput"
    assert 'op: "MatMul"' in graph.to_pbtxt()
    import json

    (matmul,) = [op for op in json.loads(graph.to_json()) if op["type"] == "MatMul"]
    assert matmul["attrs"]["transpose_x1"] is False
    assert [i["source"] for i in matmul["inputs"]] == ["Data(x):0", "Data(w):0", "<none>"]


def test_lowering_without_dynamo_matches_the_dynamo_path():
    x, w = _inputs()
    direct = lower_fx(matmul_add, x, w, dynamic=True)
    via_dynamo = capture_ge_graphs(matmul_add, x, w, dynamic=True).graph
    assert direct.text == via_dynamo.text


def test_lowering_a_single_output_without_dynamo():
    graph = lower_fx(lambda x: torch.add(x, x), torch.randn(2, 3))
    assert graph.op_types() == ["Data", "Add", "NetOutput"]
    assert graph.ops_of_type("Add")[0].outputs[0].shape == [2, 3]


def test_text_is_stable_across_runs():
    first = capture_ge_graphs(matmul_add, *_inputs()).graph
    second = capture_ge_graphs(matmul_add, *_inputs()).graph
    assert [op.name for op in first.graph_def.op] != [] and first.text == second.text


def test_golden_graph(ge_golden):
    ge_golden.check(capture_ge_graphs(matmul_add, *_inputs(), mark_dynamic={0: 0}).graph, "matmul_add_mark_dynamic")


def test_running_a_ge_graph_without_cann_is_an_error_not_a_crash():
    from torchair_plugin.testing import current_mode

    if not current_mode().cann_less:
        pytest.skip("CANN is installed: the graph would really run")
    torch._dynamo.reset()
    compiled = torch.compile(matmul_add, backend=torchair.get_npu_backend(compiler_config=torchair.CompilerConfig()))
    with pytest.raises(RuntimeError, match="cannot run without CANN"):
        compiled(*_inputs())
