"""GE lowering regression suite: the plugin's converter through torchair's real FX -> GE path.

Every case is captured with ``torch.compile(backend=torchair.get_npu_backend(...))`` and checked
against a golden file (``goldens/lowering_<case>.txt``; rewrite with ``pytest --update-goldens``),
for the absence of any extra GE node, and for conformance: the ``MoeUpdateExpert`` node equals
the one torch-npu 2.13.0's own converter emits for the same graph.
"""

import importlib
import pathlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from torchair_plugin import _converter_hook
from torchair_plugin.testing import GraphCapture, capture_ge_graphs
from torchair_plugin.testing.companion_ops import define_companion_ops
from torchair_plugin.testing.pytest_plugin import require_ge_capture

torchair = require_ge_capture()
OP = torch.ops.npu.npu_moe_update_expert.default
NATIVE_MODULE = "torchair._ge_concrete_graph.ge_converter.custom.npu_moe_update_expert"


@dataclass(frozen=True)
class Case:
    name: str
    mode: str = "static"  # static | mark_dynamic | dynamic
    balance_mode: int = 0
    ids_dtype: torch.dtype = torch.int32
    scales_dtype: Optional[torch.dtype] = None  # None: no pruning inputs
    threshold_2d: bool = False
    active_mask: bool = False
    bs: int = 6
    k: int = 4
    experts: int = 16
    world_size: int = 4
    rank: int = 1

    def inputs(self):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.experts, (self.bs, self.k), generator=g).to(self.ids_dtype)
        f = self.world_size + 1
        table = torch.zeros(self.experts, f, dtype=torch.int32)
        for e in range(self.experts):
            table[e, 0], table[e, 1] = 1, e
        args = [ids, table]
        if self.scales_dtype is not None:
            args.append(torch.rand(self.bs, self.k, generator=g).to(self.scales_dtype))
            shape = (1, self.k) if self.threshold_2d else (self.k,)
            args.append(torch.full(shape, 0.05))
            if self.active_mask:
                args.append(torch.ones(self.bs, dtype=torch.bool))
        return args

    def attrs(self):
        if self.balance_mode == 1:
            return {"balance_mode": 1}
        return {"local_rank_id": self.rank, "world_size": self.world_size, "balance_mode": 0}

    def fn(self):
        attrs = self.attrs()

        def update(ids, table, scales=None, threshold=None, mask=None):
            return torch.ops.npu.npu_moe_update_expert(
                ids, table, expert_scales=scales, pruning_threshold=threshold, active_mask=mask, **attrs
            )

        return update

    def capture(self):
        args = self.inputs()
        if self.mode == "dynamic":
            return capture_ge_graphs(self.fn(), *args, dynamic=True)
        if self.mode == "mark_dynamic":
            # BS is dim 0 of expert_ids, expert_scales and active_mask: mark all that are given.
            marks = {i: 0 for i in (0, 2, 4) if i < len(args)}
            return capture_ge_graphs(self.fn(), *args, mark_dynamic=marks)
        return capture_ge_graphs(self.fn(), *args)


CASES = [
    Case("static_mode0_int32"),
    Case("static_mode1_int64", balance_mode=1, ids_dtype=torch.int64),
    Case("static_mode0_fp16_k", scales_dtype=torch.float16),
    Case("static_mode1_bf16_1k", balance_mode=1, scales_dtype=torch.bfloat16, threshold_2d=True),
    Case("static_mode0_fp32_k_mask_int64", ids_dtype=torch.int64, scales_dtype=torch.float32, active_mask=True),
    Case("static_mode1_fp32_1k_mask", balance_mode=1, scales_dtype=torch.float32, threshold_2d=True, active_mask=True),
    Case("mark_dynamic_mode0_int32", mode="mark_dynamic"),
    Case(
        "mark_dynamic_mode1_fp16_1k_mask_int64",
        mode="mark_dynamic",
        balance_mode=1,
        ids_dtype=torch.int64,
        scales_dtype=torch.float16,
        threshold_2d=True,
        active_mask=True,
    ),
    Case("dynamic_mode1_int32", mode="dynamic", balance_mode=1),
    Case(
        "dynamic_mode0_bf16_k_mask_int64",
        mode="dynamic",
        ids_dtype=torch.int64,
        scales_dtype=torch.bfloat16,
        active_mask=True,
    ),
    Case("dynamic_mode0_fp32_1k", mode="dynamic", scales_dtype=torch.float32, threshold_2d=True),
]

GE_DTYPES = {
    torch.int32: "DT_INT32",
    torch.int64: "DT_INT64",
    torch.float16: "DT_FLOAT16",
    torch.bfloat16: "DT_BF16",
    torch.float32: "DT_FLOAT",
}


@contextmanager
def native_converter():
    """torch-npu's own converter registered for the op for the duration (ours restored after).

    Its module registers on import; reloading it registers it again (last one wins). The
    ``_ge_converter`` attribute is torchair's registry, read to check who is registered.
    """
    ours = _converter_hook.converter_module().convert_npu_moe_update_expert
    importlib.reload(importlib.import_module(NATIVE_MODULE))
    assert OP._ge_converter.__wrapped__.__module__ == NATIVE_MODULE
    try:
        yield
    finally:
        torchair.register_fx_node_ge_converter(OP)(ours)


def _node(graph, op_type="MoeUpdateExpert"):
    nodes = [op for op in graph.graph_def.op if op.type == op_type]
    assert len(nodes) == 1, graph
    return nodes[0]


def _node_text(graph):
    text = graph.text
    start = text.index("MoeUpdateExpert_0: MoeUpdateExpert")
    end = text.index("\nNetOutput_0:") if "\nNetOutput_0:" in text else len(text)
    block = text[start:end]
    return block.split("\nMoeDistribute")[0]


@pytest.fixture(scope="module")
def ours_registered():
    assert _converter_hook.state() is _converter_hook.PLUGIN
    assert OP._ge_converter.__wrapped__.__module__ == _converter_hook.CONVERTER_MODULE


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_lowering(case, ge_golden, ours_registered):
    result = case.capture()
    assert result.fx_graph_count == 1 and result.graph_breaks == 0
    graph = result.graph
    ge_golden.check(graph, f"lowering_{case.name}")

    n_inputs = len(case.inputs())
    assert graph.op_types() == ["Data"] * n_inputs + ["MoeUpdateExpert", "NetOutput"]  # no Cast, no Identity
    node = graph.ops_of_type("MoeUpdateExpert")[0]
    # Data ops are named after the function's arguments (ids, table, scales, threshold, mask)
    names = ["ids", "table", "scales", "threshold", "mask"][:n_inputs]
    assert [i.source for i in node.inputs] == [f"Data({n}):0" for n in names] + ["<none>"] * (5 - n_inputs)
    assert [o.dtype for o in node.outputs] == [GE_DTYPES[case.ids_dtype], "DT_BOOL"]
    if case.scales_dtype is not None:
        assert node.inputs[2].dtype == GE_DTYPES[case.scales_dtype]
    assert node.attrs == {"local_rank_id": -1, "world_size": -1, **case.attrs()}
    dynamic_bs = case.mode != "static"
    assert node.outputs[0].shape[0] == (-1 if dynamic_bs else case.bs)

    # Conformance with torch-npu's converter, same graph.
    with native_converter():
        native = case.capture().graph
    assert _node_text(native) == _node_text(graph)
    # Stronger than required: our node is byte-for-byte torchair's IR-path node.
    assert _node(native) == _node(graph)


def test_dynamic_true_compiles_once_over_bs_2_to_512(ours_registered):
    case = Case("recompiles", balance_mode=1, scales_dtype=torch.float16, active_mask=True)
    capture = GraphCapture(case.fn(), dynamic=True)
    for bs in range(2, 513):
        args = Case("recompiles", balance_mode=1, scales_dtype=torch.float16, active_mask=True, bs=bs).inputs()
        ids, mask = capture(*args)
        assert ids.shape == (bs, case.k) and mask.shape == (bs, case.k)
    assert capture.result.fx_graph_count == 1
    assert len(capture.result.graphs) == 1


# --- the chain: update_expert -> dispatch_v2 -> combine_v2 ---------------------------------------------


def _chain_of(suffix):
    """update_expert -> dispatch -> combine, v2 (``suffix="_v2"``) or v1 (""): they take the same
    positions. The ops are looked up at call time: they may be defined after this module loads."""

    def chain(ids, table, scales, threshold, x):
        dispatch = getattr(torch.ops.npu, f"npu_moe_distribute_dispatch{suffix}")
        combine = getattr(torch.ops.npu, f"npu_moe_distribute_combine{suffix}")
        balanced_ids, balanced_mask = torch.ops.npu.npu_moe_update_expert(
            ids, table, expert_scales=scales, pruning_threshold=threshold, local_rank_id=1, world_size=4
        )
        expand_x, _, assist_info, _, ep_recv_counts, _, _ = dispatch(
            x, balanced_ids, "ep", 4, 1, 16, x_active_mask=balanced_mask
        )
        return combine(
            expand_x, balanced_ids, assist_info, ep_recv_counts, scales, "ep", 4, 1, 16, x_active_mask=balanced_mask
        )

    return chain


chain = _chain_of("_v2")


def chain_inputs():
    args = Case("chain", scales_dtype=torch.float32).inputs()
    return args + [torch.randn(args[0].shape[0], 32, dtype=torch.bfloat16)]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_chain_is_one_graph_fed_by_update_expert(dynamic, ge_golden, ours_registered):
    define_companion_ops()
    result = capture_ge_graphs(chain, *chain_inputs(), dynamic=dynamic)
    assert result.fx_graph_count == 1 and result.graph_breaks == 0
    graph = result.graph
    ge_golden.check(graph, f"lowering_chain_{'dynamic' if dynamic else 'static'}")
    assert graph.op_types() == ["Data"] * 5 + [
        "MoeUpdateExpert",
        "MoeDistributeDispatchV2",
        "MoeDistributeCombineV2",
        "NetOutput",
    ]
    dispatch = {i.name: i.source for i in graph.ops_of_type("MoeDistributeDispatchV2")[0].inputs}
    assert dispatch["expert_ids"] == "MoeUpdateExpert_0:0"
    assert dispatch["x_active_mask"] == "MoeUpdateExpert_0:1"
    combine = {i.name: i.source for i in graph.ops_of_type("MoeDistributeCombineV2")[0].inputs}
    assert combine["expert_ids"] == "MoeUpdateExpert_0:0"
    assert combine["x_active_mask"] == "MoeUpdateExpert_0:1"

    with native_converter():
        native = capture_ge_graphs(chain, *chain_inputs(), dynamic=dynamic).graph
    assert native.text == graph.text


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_the_v1_chain_is_one_graph_fed_by_update_expert(dynamic, ge_golden, ours_registered):
    """Issue 21: the op's documentation names both dispatches; capture once had CPU kernels for v2 only."""
    from torchair_plugin.registration import op_exists

    define_companion_ops()
    if not op_exists("npu::npu_moe_distribute_dispatch"):
        pytest.skip("this torch-npu has no npu_moe_distribute_dispatch (v1)")
    chain_v1 = _chain_of("")
    result = capture_ge_graphs(chain_v1, *chain_inputs(), dynamic=dynamic)
    assert result.fx_graph_count == 1 and result.graph_breaks == 0
    graph = result.graph
    ge_golden.check(graph, f"lowering_chain_v1_{'dynamic' if dynamic else 'static'}")
    assert graph.op_types() == ["Data"] * 5 + [
        "MoeUpdateExpert",
        "MoeDistributeDispatch",
        "MoeDistributeCombine",
        "NetOutput",
    ]
    for op_type in ("MoeDistributeDispatch", "MoeDistributeCombine"):
        inputs = {i.name: i.source for i in graph.ops_of_type(op_type)[0].inputs}
        assert inputs["expert_ids"] == "MoeUpdateExpert_0:0" and inputs["x_active_mask"] == "MoeUpdateExpert_0:1"


# --- the converter's own checks --------------------------------------------------------------------


INVALID = [
    ({"balance_mode": 2}, {}),
    ({"balance_mode": 0, "world_size": 1, "local_rank_id": 0}, {}),
    ({"balance_mode": 0, "world_size": 4, "local_rank_id": 4}, {}),
    ({"balance_mode": 1}, {"expert_scales": True}),
    ({"balance_mode": 1}, {"pruning_threshold": True}),
    ({"balance_mode": 1}, {"active_mask": True}),
]


@pytest.mark.parametrize("attrs,optional", INVALID)
def test_converter_rejects_what_the_fake_kernel_rejects_with_the_same_message(attrs, optional):
    from torchair_plugin.fake import npu_moe_update_expert_fake

    convert = _converter_hook.converter_module().convert_npu_moe_update_expert
    ids, table = torch.zeros(2, 2, dtype=torch.int32), torch.ones(4, 5, dtype=torch.int32)
    tensors = {
        "expert_scales": torch.ones(2, 2),
        "pruning_threshold": torch.ones(2),
        "active_mask": torch.ones(2, dtype=torch.bool),
    }
    given = {name: tensors[name] for name in optional}
    with pytest.raises(RuntimeError) as fake_error:
        npu_moe_update_expert_fake(ids, table, **given, **attrs)
    # The converter never looks inside its tensors before the checks: placeholders will do.
    sentinels = {name: object() for name in optional}
    with pytest.raises(RuntimeError) as converter_error:
        convert(object(), object(), **sentinels, **attrs)
    assert str(converter_error.value) == str(fake_error.value)


def test_the_ops_own_lowering_is_shared_by_every_torch_npu():
    """The matrix (``nox -s goldens``, ``nox -s matrix``) captures these graphs with each supported
    torch-npu's torchair and keeps a per-version golden only where the text differs. For the op
    itself none does (Data ops are named after their inputs, so Dynamo's input order, which torch
    2.6 sets differently, changes nothing); only the chain has some, because dispatch_v2/combine_v2
    gained inputs and attrs between releases. A per-version copy of an op golden means the op's
    lowering really differs on that version: look before accepting it."""
    goldens = pathlib.Path(__file__).parent / "goldens"
    for version_dir in sorted(goldens.glob("torch_npu-*")):
        # aclgraph goldens (tests/test_aclgraph_capture.py) are FX graphs, whose inputs follow Dynamo
        own = {p.name for p in version_dir.iterdir() if not p.name.startswith("aclgraph_")}
        chains = {f"lowering_chain{v}_{d}.txt" for v in ("", "_v1") for d in ("static", "dynamic")}
        assert own <= chains, (version_dir, own)
