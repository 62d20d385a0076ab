"""Why a capture has the graphs it has: Dynamo's recompile reasons, and the training switch."""

import pytest
import torch

from torchair_plugin.testing import GraphCapture, capture_ge_graphs
from torchair_plugin.testing.pytest_plugin import require_ge_capture

require_ge_capture()


def double(x):
    return x * 2


def test_each_recompile_has_a_reason_naming_the_input_and_what_changed():
    capture = GraphCapture(double)
    capture(torch.randn(8, 4))
    capture(torch.randn(1, 4))  # BS=1
    capture(torch.randn(8))  # another rank
    result = capture.result
    assert result.fx_graph_count == 3 and len(result.recompile_reasons) == 2
    first, second = result.recompile_reasons
    assert "'x'" in first and "size mismatch at index 0" in first and "expected 8, actual 1" in first
    assert "'x'" in second and "rank mismatch" in second
    assert "L[" not in first + second  # older torch's frame-locals spelling, normalised


def test_a_call_served_from_the_cache_adds_no_reason():
    capture = GraphCapture(double, dynamic=True)
    for bs in (2, 8, 64):
        capture(torch.randn(bs, 4))
    assert capture.result.fx_graph_count == 1 and capture.result.recompile_reasons == []


def test_asking_for_the_one_graph_of_a_recompiled_capture_says_why_there_are_two():
    capture = GraphCapture(double)
    capture(torch.randn(8, 4))
    capture(torch.randn(1, 4))
    with pytest.raises(AssertionError, match=r"(?s)2 GE graph\(s\).*recompiled because .*'x' size mismatch"):
        capture.result.graph


class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(4))

    def forward(self, x):
        return torch.sin(x * self.scale)


def _net_output_inputs(result):
    return len(result.graph.ops_of_type("NetOutput")[0].inputs)


def test_a_parameter_gives_the_inference_graph_by_default_and_the_training_forward_on_request():
    x = torch.randn(8, 4)
    assert _net_output_inputs(capture_ge_graphs(Scaled(), x)) == 1
    # AOTAutograd's training forward also returns what the backward needs (x * scale, for sin).
    assert _net_output_inputs(capture_ge_graphs(Scaled(), x, training=True)) > 1
    assert torch.is_grad_enabled()  # the default's no_grad does not outlive the call
