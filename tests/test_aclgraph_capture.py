"""aclgraph capture: the FX graph torchair's reduce-overhead mode and torch_npu's npugraph_ex backend
would record into an ACL graph, taken off the NPU, with its static inputs and host syncs.

Goldens: ``goldens/aclgraph_<mode>_<case>.txt`` (rewrite with ``pytest --update-goldens``).
"""

import importlib
import inspect
import os
import pathlib
import subprocess
import sys
import warnings

import pytest
import torch

from torchair_plugin import _upstream
from torchair_plugin.testing import AclGraphCapture, available_aclgraph_modes, capture_aclgraph_graphs
from torchair_plugin.testing.aclgraph_capture import COPIED, STATIC, StaticInputChanged, mode_problem
from torchair_plugin.testing.pytest_plugin import require_aclgraph_capture, require_ge_capture

torchair = require_ge_capture()
MODES = ["reduce-overhead", "npugraph_ex"]
WORLD_SIZE, RANK, EXPERTS, K, HIDDEN = 4, 1, 16, 4, 32


def eplb_table():
    table = torch.zeros(EXPERTS, WORLD_SIZE + 1, dtype=torch.int32)
    table[:, 0], table[:, 1] = 1, torch.arange(EXPERTS, dtype=torch.int32)
    return table


class MoeRouting(torch.nn.Module):
    """update_expert -> dispatch_v2 -> combine_v2, the EPLB table held the way serving stacks hold it."""

    def __init__(self, table_as="buffer"):
        super().__init__()
        if table_as == "buffer":
            self.register_buffer("eplb_table", eplb_table())
        elif table_as == "parameter":
            self.eplb_table = torch.nn.Parameter(eplb_table(), requires_grad=False)

    def forward(self, ids, scales, threshold, x, table=None):
        table = self.eplb_table if table is None else table
        balanced_ids, mask = torch.ops.npu.npu_moe_update_expert(
            ids, table, expert_scales=scales, pruning_threshold=threshold, local_rank_id=RANK, world_size=WORLD_SIZE
        )
        expand_x, _, assist_info, _, ep_recv_counts, _, _ = torch.ops.npu.npu_moe_distribute_dispatch_v2(
            x, balanced_ids, "ep", WORLD_SIZE, RANK, EXPERTS, x_active_mask=mask
        )
        return torch.ops.npu.npu_moe_distribute_combine_v2(
            expand_x,
            balanced_ids,
            assist_info,
            ep_recv_counts,
            scales,
            "ep",
            WORLD_SIZE,
            RANK,
            EXPERTS,
            x_active_mask=mask,
        )


def routing_inputs(bs=6):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randint(0, EXPERTS, (bs, K), generator=g, dtype=torch.int32),
        torch.rand(bs, K, generator=g),
        torch.full((K,), 0.05),
        torch.randn(bs, HIDDEN, generator=g).to(torch.bfloat16),
    )


def quiet_capture(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchair's "reduce-overhead will be deprecated" and friends
        return capture_aclgraph_graphs(*args, **kwargs)


def line_of(fragment, function):
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if fragment in line)


# --- which modes capture ----------------------------------------------------------------------------------


def test_the_modes_this_torch_npu_has_are_the_ones_capture_offers():
    require_aclgraph_capture("reduce-overhead")
    modes = available_aclgraph_modes()
    assert "reduce-overhead" in modes
    assert ("npugraph_ex" in modes) == (mode_problem("npugraph_ex") is None)


@pytest.mark.parametrize("mode", MODES)
def test_the_torchair_internals_capture_stands_in_for_resolve(mode):
    require_aclgraph_capture(mode)
    module = importlib.import_module(_upstream.acl_converter_module(mode))
    concrete = module.__dict__[_upstream.ACL_CONCRETE_GRAPH]
    assert callable(module.__dict__[_upstream.ACL_GRAPH]) and _upstream.ACL_CODEGEN in concrete.__dict__


# --- the chain, with goldens ------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("mode", MODES)
def test_the_chain_is_one_acl_graph_matching_its_golden(mode, dynamic, ge_golden):
    require_aclgraph_capture(mode)
    result = quiet_capture(MoeRouting(), *routing_inputs(), mode=mode, dynamic=dynamic)
    assert result.fx_graph_count == 1 and result.graph_breaks == 0 and not result.host_syncs, result.summary()
    assert [t for t in result.graph.op_targets() if t.startswith("npu.")] == [
        "npu.npu_moe_update_expert",
        "npu.npu_moe_distribute_dispatch_v2",
        "npu.npu_moe_distribute_combine_v2",
    ]
    ge_golden.check(result.graph, f"aclgraph_{mode}_chain_{'dynamic' if dynamic else 'static'}")


def test_dispatch_and_combine_read_the_updated_ids_and_mask():
    require_aclgraph_capture("reduce-overhead")
    gm = quiet_capture(MoeRouting(), *routing_inputs()).graph.graph_module
    update, dispatch, combine = [n for n in gm.graph.nodes if n.op == "call_function" and "npu_moe" in str(n.target)]
    for consumer in (dispatch, combine):
        ids, mask = consumer.args[1], consumer.kwargs["x_active_mask"]
        assert (ids.args, mask.args) == ((update, 0), (update, 1))


def test_a_dynamic_batch_serves_every_size_with_one_graph():
    require_aclgraph_capture("reduce-overhead")
    capture = AclGraphCapture(MoeRouting(), dynamic=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for bs in (2, 7, 64):
            capture(*routing_inputs(bs))
    assert capture.result.fx_graph_count == 1 and len(capture.result.graphs) == 1, capture.result.summary()


def test_a_static_graph_recompiles_for_a_new_batch_and_says_why():
    require_aclgraph_capture("reduce-overhead")
    capture = AclGraphCapture(MoeRouting())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        capture(*routing_inputs(6))
        capture(*routing_inputs(9))
    assert capture.result.fx_graph_count == 2
    (reason,) = capture.result.recompile_reasons
    assert "size mismatch at index 0. expected 6, actual 9" in reason


# --- static inputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table_as", ["buffer", "parameter"])
def test_the_eplb_table_held_by_the_module_is_a_static_input(table_as):
    require_aclgraph_capture("reduce-overhead")
    graph = quiet_capture(MoeRouting(table_as), *routing_inputs()).graph
    (table,) = [i for i in graph.inputs if i.name == "self.eplb_table"]
    assert (table.kind, table.why) == (STATIC, table_as)
    assert graph.static_inputs == ["self.eplb_table"]


def test_a_table_marked_static_address_is_a_static_input():
    require_aclgraph_capture("reduce-overhead")
    table = eplb_table()
    torch._dynamo.mark_static_address(table)
    graph = quiet_capture(MoeRouting(None), *routing_inputs(), table).graph
    # (torch 2.7 hands AOTAutograd inputs that do not line up with Dynamo's: names fall back to arg<i>_1)
    assert [(i.kind, i.why) for i in graph.inputs if i.kind == STATIC] == [(STATIC, "mark_static_address")], (
        graph.inputs
    )


def test_a_table_passed_as_a_plain_argument_is_copied_in_at_every_replay():
    require_aclgraph_capture("reduce-overhead")
    graph = quiet_capture(MoeRouting(None), *routing_inputs(), eplb_table()).graph
    assert graph.static_inputs == [] and "table" in graph.copied_inputs
    assert all(i.kind == COPIED for i in graph.inputs)


def rebind_then_call(model, config=None):
    capture = AclGraphCapture(model, config=config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        capture(*routing_inputs())
        model.eplb_table = model.eplb_table.clone()  # the vllm-ascend PR #4417 mistake
        capture(*routing_inputs())
    return capture.result, [w for w in caught if issubclass(w.category, StaticInputChanged)]


def test_rebinding_a_static_table_warns_that_torchair_recaptures():
    require_aclgraph_capture("reduce-overhead")
    result, caught = rebind_then_call(MoeRouting())
    assert result.fx_graph_count == 1  # Dynamo does not see it; the ACL graph does
    (message,) = result.static_input_changes
    assert [str(w.message) for w in caught] == [message]
    assert "'self.eplb_table' (buffer) has new storage on call 2" in message and "captures a new ACL graph" in message


def test_rebinding_a_frozen_static_table_warns_that_replays_read_the_old_table():
    require_aclgraph_capture("reduce-overhead")
    config = torchair.CompilerConfig()
    config.experimental_config.frozen_parameter = True
    result, _ = rebind_then_call(MoeRouting(), config)
    (message,) = result.static_input_changes
    assert result.graph.frozen and "keep reading the old storage" in message


def test_updating_the_table_in_place_does_not_warn():
    require_aclgraph_capture("reduce-overhead")
    model = MoeRouting()
    capture = AclGraphCapture(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaticInputChanged)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
        capture(*routing_inputs())
        model.eplb_table.copy_(eplb_table().flip(0))
        capture(*routing_inputs())
    assert capture.result.static_input_changes == []


# --- host syncs -------------------------------------------------------------------------------------------------


def scaled_by_count(x, counts):
    total = int(counts.sum().item())
    return x * total


def test_item_inside_the_captured_region_is_a_host_sync_with_its_source_line():
    require_aclgraph_capture("reduce-overhead")
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        result = quiet_capture(scaled_by_count, torch.ones(4), torch.ones(3))
    (sync,) = result.host_syncs
    assert sync.in_graph and sync.graph == 0 and sync.what.startswith("aten._local_scalar_dense")
    assert (sync.source.filename, sync.source.lineno) == (__file__, line_of(".item()", scaled_by_count))
    assert sync.source.code == "total = int(counts.sum().item())"
    assert result.graph.host_syncs == [sync]


def test_item_that_breaks_the_graph_is_a_host_sync_between_two_captured_graphs():
    require_aclgraph_capture("reduce-overhead")
    result = quiet_capture(scaled_by_count, torch.ones(4), torch.ones(3))
    assert result.graph_breaks == 1 and len(result.graphs) == 2
    (sync,) = result.host_syncs
    assert not sync.in_graph and "Tensor.item" in sync.what  # "Tensor.item()" from torch 2.7 on
    assert sync.source.lineno == line_of(".item()", scaled_by_count)
    (reason,) = result.graph_break_reasons
    assert reason.endswith(f"test_aclgraph_capture.py:{sync.source.lineno}: total = int(counts.sum().item())")


def active_rows(x, mask):
    return x[mask.nonzero().squeeze(-1)]


def test_a_data_dependent_shape_that_breaks_the_graph_is_a_host_sync():
    # With capture_dynamic_output_shape_ops=True torchair (2.13) fails to compile such a graph in
    # both modes: its converter compares the unbacked size (a ValuePack) with 0.
    require_aclgraph_capture("reduce-overhead")
    result = quiet_capture(active_rows, torch.ones(4, 2), torch.tensor([True, False, True, True]))
    (sync,) = result.host_syncs
    assert not sync.in_graph and "nonzero" in sync.what
    assert sync.source.lineno == line_of("nonzero", active_rows)


def test_the_text_form_names_symbols_in_order_of_first_appearance():
    require_aclgraph_capture("reduce-overhead")
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        text = quiet_capture(scaled_by_count, torch.ones(4), torch.ones(3)).graph.text
    assert "_local_scalar_dense_0 = aten._local_scalar_dense(sum_0) -> sym zuf0" in text


# --- in a fresh process: after a capture, torchair is torchair again ---------------------------------------------

# One interpreter checks both facts, in the order a test session can reach them: GE lowering after
# an npugraph_ex capture (torchair's one-time patches once failed after npugraph_ex's: 'Trying to
# override a python impl for DispatchKey.AutogradPrivateUse1 on operator aten::to.other'), then a
# plain reduce-overhead compile after a capture, which must build torchair's real AclGraph (nothing
# left stood in for).
AFTER_A_CAPTURE = """
import warnings
import torchair_plugin
from torchair_plugin.testing import available_aclgraph_modes, capture_aclgraph_graphs, capture_ge_graphs, import_torchair
torchair = import_torchair()
import torch
warnings.simplefilter("ignore")
if "npugraph_ex" in available_aclgraph_modes():
    capture_aclgraph_graphs(lambda x: x * 2, torch.ones(2), mode="npugraph_ex")
    print("npugraph_ex captured", flush=True)
print("ge graphs", capture_ge_graphs(lambda x: x + 1, torch.ones(2)).fx_graph_count, flush=True)
fn = lambda x: x * 2
print("captured", len(capture_aclgraph_graphs(fn, torch.ones(3)).graphs), flush=True)
config = torchair.CompilerConfig()
config.mode = "reduce-overhead"
try:
    torch.compile(fn, backend=torchair.get_npu_backend(compiler_config=config))(torch.ones(3))
except Exception as error:
    print("plain compile raised", type(error).__name__, flush=True)
"""


def test_after_captures_torchair_lowers_and_builds_its_real_acl_graph_in_a_fresh_process():
    require_aclgraph_capture("reduce-overhead")
    root = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", AFTER_A_CAPTURE],
        env=dict(os.environ, PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = done.stdout + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert ("npugraph_ex captured" in lines) is ("npugraph_ex" in available_aclgraph_modes()), report
    assert "ge graphs 1" in lines and "captured 1" in lines, report
    # The real AclGraph asks torch_npu for the device: the CANN stubs refuse aclInit.
    assert "plain compile raised" in done.stdout and "aclInit" in done.stderr, report
