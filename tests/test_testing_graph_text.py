"""torchair_plugin.testing.graph_text: the stable readable form of GE graphs."""

import random

import pytest

from torchair_plugin.testing import OpIR, graph_text
from torchair_plugin.testing.pytest_plugin import require_ge_capture


@pytest.mark.parametrize(
    "meta, shape",
    [
        ("Tensor(dtype=torch.float32, shape=torch.Size([3, 5])", [3, 5]),
        ("Tensor(dtype=torch.float32, shape=torch.Size([s77, 4])", [-1, 4]),
        ("Tensor(dtype=torch.int32, shape=torch.Size([Max(1, s0), 2*s1, 7])", [-1, -1, 7]),
        ("Tensor(dtype=torch.bool, shape=torch.Size([])", []),
        ("SymInt(s0)", None),
    ],
)
def test_meta_shapes(meta, shape):
    assert graph_text.parse_meta_shape(meta) == shape


@pytest.fixture(scope="module")
def ge():
    """torchair's real graph builders (Data, the MoeUpdateExpert raw op, ge_op)."""
    require_ge_capture()
    from torchair._ge_concrete_graph import auto_generated_ge_raw_ops as raw_ops
    from torchair._ge_concrete_graph.compat_ir import ge_op
    from torchair.ge import attr
    from torchair.ge._ge_graph import Data, DataType, GeGraph, default_ge_graph

    class Builders:
        pass

    b = Builders()
    b.raw_ops, b.ge_op, b.attr, b.Data, b.DataType, b.GeGraph, b.default_ge_graph = (
        raw_ops,
        ge_op,
        attr,
        Data,
        DataType,
        GeGraph,
        default_ge_graph,
    )
    if not hasattr(raw_ops, "MoeUpdateExpert"):
        pytest.skip("this torch-npu has no MoeUpdateExpert raw op")
    return b


def _update_expert_graph(ge, spelling, balance_mode=0, with_scales=False):
    graph = ge.GeGraph()
    with ge.default_ge_graph(graph):
        ids = ge.Data(index=0, dtype=ge.DataType.DT_INT32, shape=[4, 2], placement="NPU")
        table = ge.Data(index=1, dtype=ge.DataType.DT_INT32, shape=[8, 3], placement="NPU")
        scales = threshold = None
        if with_scales:
            scales = ge.Data(index=2, dtype=ge.DataType.DT_FLOAT, shape=[4, 2], placement="NPU")
            threshold = ge.Data(index=3, dtype=ge.DataType.DT_FLOAT, shape=[2], placement="NPU")
        if spelling == "ir":  # torchair's raw op: drops None inputs and default attrs
            ge.raw_ops.MoeUpdateExpert(ids, table, scales, threshold, None, balance_mode=balance_mode)
        else:  # ge_op(ir=None): '' placeholders with DT_UNDEFINED, every attr kept
            ge.ge_op(
                op_type="MoeUpdateExpert",
                inputs={
                    "expert_ids": ids,
                    "eplb_table": table,
                    "expert_scales": scales,
                    "pruning_threshold": threshold,
                    "active_mask": None,
                },
                attrs={
                    "local_rank_id": ge.attr.Int(-1),
                    "world_size": ge.attr.Int(-1),
                    "balance_mode": ge.attr.Int(balance_mode),
                },
                outputs=["balanced_expert_ids", "balanced_active_mask"],
                ir=None,
            )
    return graph._proto


@pytest.mark.parametrize("balance_mode", [0, 1])
@pytest.mark.parametrize("with_scales", [False, True])
def test_both_spellings_of_optional_inputs_and_defaults_read_the_same(ge, balance_mode, with_scales):
    via_ir = _update_expert_graph(ge, "ir", balance_mode, with_scales)
    via_raw = _update_expert_graph(ge, "raw", balance_mode, with_scales)
    node = [op for op in via_ir.op if op.type == "MoeUpdateExpert"][0]
    assert "balance_mode" not in node.attr or balance_mode != 0  # the ir= path did drop the default
    assert graph_text.to_text(graph_text.normalize(via_ir)) == graph_text.to_text(graph_text.normalize(via_raw))
    (op,) = [op for op in graph_text.normalize(via_ir) if op.type == "MoeUpdateExpert"]
    assert [i.name for i in op.inputs] == list(graph_text.OP_IRS["MoeUpdateExpert"].inputs)
    assert op.inputs[4].source == graph_text.NONE_INPUT
    assert (op.inputs[2].source == graph_text.NONE_INPUT) is (not with_scales)
    assert op.attrs == {"balance_mode": balance_mode, "local_rank_id": -1, "world_size": -1}


def test_unknown_op_types_are_shown_as_emitted(ge):
    via_ir = _update_expert_graph(ge, "ir")
    (op,) = [op for op in graph_text.normalize(via_ir, irs={}) if op.type == "MoeUpdateExpert"]
    assert [i.name for i in op.inputs] == ["expert_ids", "eplb_table"]
    assert op.attrs == {}


def test_an_op_ir_that_misses_an_input_is_an_error(ge):
    wrong = {"MoeUpdateExpert": OpIR(inputs=("expert_ids",))}
    with pytest.raises(ValueError, match="does not list"):
        graph_text.normalize(_update_expert_graph(ge, "ir"), irs=wrong)


def test_text_ignores_node_names_and_op_list_order(ge):
    graph = _update_expert_graph(ge, "ir", with_scales=True)
    expected = graph_text.to_text(graph_text.normalize(graph))
    # Same graph, torchair's counters elsewhere (other names) and ops listed in another order.
    renamed = type(graph)()
    renamed.CopyFrom(graph)
    mapping = {op.name: f"n{1000 - i}_{op.type.lower()}" for i, op in enumerate(renamed.op)}
    for op in renamed.op:
        op.name = mapping[op.name]
        for k, src in enumerate(op.input):
            if src:
                producer, _, idx = src.rpartition(":")
                op.input[k] = f"{mapping[producer]}:{idx}"
    ops = list(renamed.op)
    random.Random(0).shuffle(ops)
    del renamed.op[:]
    renamed.op.extend(ops)
    assert graph_text.to_text(graph_text.normalize(renamed)) == expected


def test_internal_attrs_are_left_out_and_attrs_sorted(ge):
    graph = _update_expert_graph(ge, "raw", balance_mode=1)
    text = graph_text.to_text(graph_text.normalize(graph))
    assert "_input_name_key" not in text and "_meta" not in text
    attr_lines = [line for line in text.splitlines() if line.startswith("  attr ") and "MoeUpdate" not in line]
    assert "  attr balance_mode = 1" in attr_lines


def test_a_cycle_is_reported():
    require_ge_capture()
    from torchair._ge_concrete_graph.ge_ir_pb2 import GraphDef

    graph = GraphDef()
    a, b = graph.op.add(), graph.op.add()
    a.name, a.type, b.name, b.type = "a", "Add", "b", "Add"
    a.input.append("b:0")
    b.input.append("a:0")
    with pytest.raises(ValueError, match="cycle"):
        graph_text.normalize(graph)
