"""ExpertLoadRecorder: eager equals a plain loop; compiled (aot_eager, inductor, GE capture) it
stays in one graph with the op and counts the same."""

import pytest
import torch
from eplb_loop_model import Routing, fresh_counter, inputs
from golden import golden_update_expert
from hypothesis import given, settings
from hypothesis import strategies as st

from torchair_plugin.eplb import ExpertLoadRecorder, StableEplbTable

TABLE = [[2, 0, 4], [1, 1, -1], [1, 2, -1], [2, 3, 6], [1, 5, -1], [1, 7, -1]]


class LoopRecorder:
    """The golden: per-step dicts of counts, kept for the last ``window`` steps."""

    def __init__(self, num_physical, num_layers, window):
        self.num_physical, self.num_layers, self.window = num_physical, num_layers or 1, window
        self.steps = [self._empty()]
        self.enabled = True

    def _empty(self):
        return [[0] * self.num_physical for _ in range(self.num_layers)]

    def record(self, ids, mask, layer):
        if not self.enabled:
            return
        for i, row in enumerate(ids):
            for j, physical in enumerate(row):
                if mask is None or mask[i][j]:
                    self.steps[-1][layer or 0][physical] += 1

    def step(self):
        self.steps = (self.steps + [self._empty()])[-self.window :]

    def window_load(self):
        return [
            [sum(step[layer][p] for step in self.steps) for p in range(self.num_physical)]
            for layer in range(self.num_layers)
        ]


@st.composite
def sessions(draw):
    num_physical = draw(st.integers(1, 40))
    num_layers = draw(st.sampled_from([None, 1, 3]))
    window = draw(st.integers(1, 4))
    actions = draw(
        st.lists(
            st.one_of(
                st.tuples(
                    st.just("record"), st.integers(1, 20), st.integers(1, 8), st.booleans(), st.integers(0, 2**31)
                ),
                st.just(("step",)),
                st.tuples(st.just("enable"), st.booleans()),
            ),
            max_size=12,
        )
    )
    return num_physical, num_layers, window, actions


@settings(max_examples=80, deadline=None)
@given(sessions())
def test_eager_equals_a_plain_loop(session):
    num_physical, num_layers, window, actions = session
    recorder = ExpertLoadRecorder(num_physical, num_layers=num_layers, window=window)
    loop = LoopRecorder(num_physical, num_layers, window)
    for action in actions:
        if action[0] == "record":
            _, bs, k, masked, seed = action
            gen = torch.Generator().manual_seed(seed)
            ids = torch.randint(0, num_physical, (bs, k), generator=gen, dtype=torch.int32)
            mask = torch.rand(bs, k, generator=gen) < 0.6 if masked else None
            layer = None if num_layers is None else seed % num_layers
            recorder.record(ids, mask, layer=layer)
            loop.record(ids.tolist(), None if mask is None else mask.tolist(), layer)
        elif action[0] == "step":
            recorder.step()
            loop.step()
        else:
            recorder.set_enabled(action[1])
            loop.enabled = action[1]
    got = recorder.window_load()
    assert got.dtype == torch.int64
    assert (got if num_layers else got[None]).tolist() == loop.window_load()


def test_step_wraps_around_the_window_and_reset_clears():
    recorder = ExpertLoadRecorder(3, window=2)
    for step in range(5):
        recorder.record(torch.tensor([[step % 3]]))
        recorder.step()
    recorder.record(torch.tensor([[0, 1]]))
    # Steps 3 and 4 fell out; slot 1 holds step 4 (expert 1), slot 0 the current step.
    assert recorder.window_load().tolist() == [1, 2, 0] and int(recorder.slot) == 1
    recorder.reset()
    assert recorder.window_load().tolist() == [0, 0, 0] and int(recorder.slot) == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ExpertLoadRecorder(0), r"num_physical must be an int in \[1, 1024\], got 0"),
        (lambda: ExpertLoadRecorder(8, window=0), r"window must be an int in \[1, 65536\], got 0"),
        (lambda: ExpertLoadRecorder(8, dtype=torch.float16), r"dtype must be one of .*, got torch.float16"),
        (
            lambda: ExpertLoadRecorder(8).record(torch.zeros(2, 2, dtype=torch.int32), layer=0),
            r"layer must be None for a recorder without layers",
        ),
        (
            lambda: ExpertLoadRecorder(8, num_layers=2).record(torch.zeros(2, 2, dtype=torch.int32), layer=2),
            r"layer must be an int in \[0, 1\], got 2",
        ),
        (
            lambda: ExpertLoadRecorder(8).record(torch.zeros(2, 2, dtype=torch.int32), torch.ones(2, dtype=torch.bool)),
            r"balanced_active_mask.shape must equal balanced_expert_ids.shape \(2, 2\), got \(2,\)",
        ),
    ],
)
def test_bad_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def _golden_counts(calls, num_physical, enabled_per_call):
    counts, pruned = [0] * num_physical, 0
    for (ids, scales, table), enabled in zip(calls, enabled_per_call):
        balanced, mask = golden_update_expert(ids, table, scales, torch.full((ids.shape[1],), 0.3), None, -1, -1, 1)
        pruned += sum(not kept for row in mask for kept in row)
        for row, keep in zip(balanced, mask):
            for physical, kept in zip(row, keep):
                counts[physical] += int(kept and enabled)
    assert pruned, "the calls must prune some pairs, else the mask is not tested"
    return counts


def _record_through(call, recorder, stable):
    """Calls at batch sizes 3..11 with recording switched off for one; pruned pairs don't count."""
    calls, enabled = [], []
    for bs in (3, 7, 11, 4):
        on = bs != 11
        recorder.set_enabled(on)
        ids, scales = inputs(bs, 2, 6, seed=bs)
        call(ids, scales)
        calls.append((ids, scales, stable.tensor.clone()))
        enabled.append(on)
    assert recorder.window_load().tolist() == _golden_counts(calls, stable.physical_experts, enabled)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_with_dynamic_batch_is_one_graph_with_the_same_counts(backend):
    counter = fresh_counter(backend)
    stable = StableEplbTable(TABLE, world_size=4)
    recorder = ExpertLoadRecorder(stable.physical_experts)
    model = Routing(stable.tensor, recorder=recorder)
    _record_through(torch.compile(model, backend=counter, fullgraph=True, dynamic=True), recorder, stable)
    assert counter.frame_count == 1


def test_ge_capture_holds_the_recording_in_the_graph_of_moe_update_expert():
    from torchair_plugin.testing import GraphCapture
    from torchair_plugin.testing.pytest_plugin import require_ge_capture

    require_ge_capture()
    stable = StableEplbTable(TABLE, world_size=4)
    recorder = ExpertLoadRecorder(stable.physical_experts, num_layers=2, window=3)
    model = Routing(stable.tensor, recorder=recorder, layer=1)
    capture = GraphCapture(model, dynamic=True, fullgraph=True)
    calls = []
    for bs in (3, 7, 11):
        ids, scales = inputs(bs, 2, 6, seed=bs)
        capture(ids, scales)
        calls.append((ids, scales, stable.tensor))
    assert capture.result.fx_graph_count == 1 and capture.result.graph_breaks == 0, capture.result.summary()
    graph = capture.result.graph
    (add,) = graph.ops_of_type("InplaceIndexAdd")
    assert graph.ops_of_type("MoeUpdateExpert") and add.outputs[0].shape == [3, 2, 8]
    assert recorder.window_load().tolist() == [[0] * 8, _golden_counts(calls, 8, [True] * 3)]
