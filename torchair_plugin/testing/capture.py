"""Capture the real GE graphs torchair lowers a function to, without running them.

Two entry points:

- :func:`capture_ge_graphs` / :class:`GraphCapture`: the user path, ``torch.compile`` with
  ``torchair.get_npu_backend``; static, ``torch._dynamo.mark_dynamic`` or ``dynamic=True``.
  Reports how many FX graphs Dynamo handed to the backend (more than one per call means a
  graph break; more calls that add graphs mean recompiles).
- :func:`lower_fx`: no Dynamo; ``make_fx`` on fake inputs, then torchair's compiler
  (``torchair.get_compiler``) on the aten graph. Faster, for lowering one op in isolation.

Both set ``CompilerConfig().debug.run_eagerly = True`` (a real torchair flag): torchair then
lowers FX -> GE and optimises the GE graph, but returns the FX graph for eager execution
instead of loading the GE graph, so nothing needs CANN. The GE graph is taken at the end of
``GeConcreteGraph.optimize_graph_without_runtime`` (torchair internal; no public hook exposes
the lowered graph), which is the graph torchair would hand to GE.

The Dynamo path runs under ``torch.no_grad()`` unless ``training=True``: serving graphs are
inference graphs, and with grad enabled a model with a Parameter lowers AOTAutograd's training
forward (extra outputs saved for backward) and torchair tries, noisily, to compile the backward.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import inspect
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

from torchair_plugin import _upstream
from torchair_plugin.testing import _interception, graph_text
from torchair_plugin.testing._torchair_import import import_torchair

MarkDynamic = Mapping[int, Union[int, Sequence[int]]]


class CapturedGraph:
    """One lowered GE graph: the raw protobuf ``GraphDef`` and its stable renderings.

    ``input_names[i]`` names the graph input that the ``Data`` op with index ``i`` stands for
    (``ids``, ``self.w.weight``, ``ids.size(0)``): the stable text names Data ops by it, since
    the order Dynamo gives graph inputs, and so their index, differs between torch versions.
    """

    def __init__(self, graph_def: Any, input_names: Optional[Sequence[str]] = None) -> None:
        self.graph_def = graph_def
        self.input_names = list(input_names) if input_names is not None else None

    @functools.cached_property
    def ops(self) -> List[graph_text.Op]:
        """Normalised ops (see :mod:`torchair_plugin.testing.graph_text`)."""
        return graph_text.normalize(self.graph_def, input_names=self.input_names)

    @property
    def text(self) -> str:
        """The stable readable form, for golden files and diffs."""
        return graph_text.to_text(self.ops)

    def to_json(self) -> str:
        return graph_text.to_json(self.ops)

    def to_pbtxt(self) -> str:
        """The raw graph in the pbtxt format torchair's own graph dump writes."""
        module, name = _upstream.PBTXT
        return str(getattr(importlib.import_module(module), name)(self.graph_def))

    def op_types(self) -> List[str]:
        return [op.type for op in self.ops]

    def ops_of_type(self, op_type: str) -> List[graph_text.Op]:
        return [op for op in self.ops if op.type == op_type]

    def __repr__(self) -> str:
        return f"CapturedGraph({len(self.graph_def.op)} ops: {', '.join(self.op_types())})"


@dataclass
class CaptureResult:
    """What one capture saw: GE graphs, the FX graphs behind them, the last call's outputs."""

    graphs: List[CapturedGraph] = field(default_factory=list)
    fx_graphs: List[Any] = field(default_factory=list)  # torch.fx.GraphModule, one per compile
    # names of the inputs of the FX graph being lowered now (see CapturedGraph.input_names)
    pending_input_names: Optional[List[str]] = field(default=None, repr=False)
    graph_breaks: int = 0
    # Why Dynamo compiled again, one entry per recompile: the guard that failed, as Dynamo words
    # it (``0/0: tensor 'ids' size mismatch at index 0. expected 8, actual 1``).
    recompile_reasons: List[str] = field(default_factory=list)
    outputs: Any = None

    @property
    def fx_graph_count(self) -> int:
        """FX graphs compiled by the backend (graph breaks and recompiles each add one)."""
        return len(self.fx_graphs)

    def summary(self) -> str:
        """Counts, then one line per recompile reason: what to read when a count is unexpected."""
        lines = [
            f"{self.fx_graph_count} FX graph(s), {len(self.graphs)} GE graph(s), "
            f"{self.graph_breaks} graph break(s), {len(self.recompile_reasons)} recompile(s)"
        ]
        lines += [f"  recompiled because {reason}" for reason in self.recompile_reasons]
        return "\n".join(lines)

    @property
    def graph(self) -> CapturedGraph:
        """The only GE graph; AssertionError (with the counts and reasons) when there is not exactly one."""
        if len(self.graphs) != 1:
            raise AssertionError(f"expected exactly one GE graph, captured {len(self.graphs)}: {self.summary()}")
        return self.graphs[0]


# --- the hook -----------------------------------------------------------------------------------

_active = threading.local()  # .stack: list of CaptureResult receiving graphs on this thread


def _record(graph_def: Any) -> None:
    """Called with every graph torchair lowers (testing._interception's hook); transparent when no
    capture is active on the calling thread, so the hook costs one attribute lookup per compile."""
    stack = getattr(_active, "stack", None)
    if stack:
        # Copy: the GeConcreteGraph may keep editing its graph for runtime (ref data).
        kept = type(graph_def)()
        kept.CopyFrom(graph_def)
        stack[-1].graphs.append(CapturedGraph(kept, stack[-1].pending_input_names))


class _Recording:
    """Makes ``result`` the one receiving graphs on this thread, on ``local``'s stack (each kind of
    capture keeps its own: GE graphs here, ACL graphs in aclgraph_capture)."""

    def __init__(self, result: Any, local: threading.local = _active) -> None:
        self._result = result
        self._local = local

    def __enter__(self) -> Any:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        self._local.stack.append(self._result)
        return self._result

    def __exit__(self, *exc: Any) -> None:
        self._local.stack.pop()


def _eager_config(config: Any) -> Any:
    torchair = import_torchair()
    cfg = torchair.CompilerConfig() if config is None else copy.deepcopy(config)
    cfg.debug.run_eagerly = True
    return cfg


# --- the Dynamo path ----------------------------------------------------------------------------


class GraphCapture:
    """``torch.compile(fn, backend=torchair.get_npu_backend(...))``, recording every GE graph.

    Call it like ``fn``; each call runs ``fn`` eagerly (through the compiled FX graph) and adds
    what was compiled to :attr:`result`. Several calls with new shapes show recompiles.

    ``reset=True`` clears Dynamo's caches first (process-wide, as torch's own tests do), so
    that the counts are this capture's alone. Calls run under ``torch.no_grad()`` (the inference
    graph); ``training=True`` runs them with grad enabled, for the training forward.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        dynamic: Optional[bool] = False,
        config: Any = None,
        fullgraph: bool = False,
        reset: bool = True,
        training: bool = False,
    ) -> None:
        import torch

        torchair = import_torchair()
        _interception.install_capture_hook(_record)
        if reset:
            torch._dynamo.reset()
        self.training = training
        self.result = CaptureResult()
        backend = torchair.get_npu_backend(compiler_config=_eager_config(config))

        def counting_backend(gm, example_inputs):
            self.result.fx_graphs.append(gm)
            self.result.pending_input_names = graph_text.dynamo_input_names(gm)
            return backend(gm, example_inputs)

        self._compiled = torch.compile(fn, backend=counting_backend, dynamic=dynamic, fullgraph=fullgraph)
        self._fn = fn
        self._dynamic = dynamic
        self._first_sizes: Optional[dict] = None  # {argument name: shape} of the first call

    def __call__(self, *args: Any, mark_dynamic: Optional[MarkDynamic] = None, **kwargs: Any) -> Any:
        import torch

        reasons_before = len(self.result.recompile_reasons)
        with _counted_call(self.result, args, mark_dynamic, self.training):
            self.result.outputs = self._compiled(*args, **kwargs)
        if self._first_sizes is None:
            names = _argument_names(self._fn, len(args))
            self._first_sizes = {n: tuple(a.shape) if isinstance(a, torch.Tensor) else () for n, a in zip(names, args)}
        if self._dynamic:
            new = self.result.recompile_reasons[reasons_before:]
            self.result.recompile_reasons[reasons_before:] = [r + _duck_sizing_hint(r, self._first_sizes) for r in new]
        return self.result.outputs


_SIZE_MISMATCH = re.compile(r"tensor '(\w+)' size mismatch at index (\d+)\. expected (\d+), actual \d+")


def _duck_sizing_hint(reason: str, first_sizes: dict) -> str:
    """Why a size that ``dynamic=True`` should have kept symbolic was specialised, where the
    reason is Dynamo's duck sizing: on the first call that size equalled another input's size,
    so both got one symbol, which later calls cannot split (BS == K in a first test batch)."""
    match = _SIZE_MISMATCH.search(reason)
    if match is None or match.group(1) not in first_sizes:
        return ""
    name, index, expected = match.group(1), int(match.group(2)), int(match.group(3))
    twins = [
        f"{other}.size({dim})"
        for other, shape in first_sizes.items()
        for dim, size in enumerate(shape)
        if size == expected and (other, dim) != (name, index)
    ]
    if not twins:
        return ""
    return (
        f" (duck sizing: on the first call {name}.size({index}) = {expected} equalled {', '.join(twins)}, so "
        f"Dynamo gave them one symbol; mark the dim dynamic (mark_dynamic={{{list(first_sizes).index(name)}: "
        f"{index}}}, the position of {name} among the arguments) or make the other inputs buffers or parameters)"
    )


@contextlib.contextmanager
def _counted_call(
    result: Any,
    args: Sequence[Any],
    mark_dynamic: Optional[MarkDynamic],
    training: bool,
    local: threading.local = _active,
) -> Any:
    """One call of a compiled function: ``mark_dynamic`` applied to ``args``, ``result`` receiving
    graphs (on ``local``'s stack) under no_grad unless ``training``, then the graph breaks and
    recompiles the call caused added to ``result``."""
    import torch
    from torch._dynamo.utils import counters

    for index, dims in (mark_dynamic or {}).items():
        torch._dynamo.mark_dynamic(args[index], dims)
    breaks_before = sum(counters["graph_break"].values())
    failures_before = _guard_failure_counts()
    with _Recording(result, local), torch.enable_grad() if training else torch.no_grad():
        yield
    result.graph_breaks += sum(counters["graph_break"].values()) - breaks_before
    result.recompile_reasons += _new_recompile_reasons(failures_before)


def _guard_failure_counts() -> dict:
    from torch._dynamo.utils import guard_failures

    return {code: len(reasons) for code, reasons in guard_failures.items()}


def _new_recompile_reasons(before: dict) -> List[str]:
    """The recompiles since ``before``, one line each.

    Dynamo appends to ``torch._dynamo.utils.guard_failures`` (one list per code object; the same
    in torch 2.6 to 2.14) the failed guard of every cache entry it tried before compiling that
    code again: the entries one recompile adds form its reason. Older torch names the frame's
    locals ``L['x']``, newer torch ``x``: both read ``x`` here.
    """
    from torch._dynamo.utils import guard_failures

    reasons = []
    for code, failures in list(guard_failures.items()):
        new = failures[before.get(code, 0) :]
        if new:
            reasons.append(re.sub(r"L\[\s*['\"](.*?)['\"]\s*\]", r"\1", "; ".join(map(str, new))))
    return reasons


def capture_ge_graphs(
    fn: Callable,
    *args: Any,
    dynamic: Optional[bool] = False,
    mark_dynamic: Optional[MarkDynamic] = None,
    config: Any = None,
    fullgraph: bool = False,
    training: bool = False,
    **kwargs: Any,
) -> CaptureResult:
    """Compile ``fn`` with torchair's NPU backend, call it once on ``args``, return what lowered.

    ``mark_dynamic`` maps a positional argument's index to the dim(s) to mark dynamic with
    ``torch._dynamo.mark_dynamic``. ``config`` is a ``torchair.CompilerConfig`` (copied; its
    ``debug.run_eagerly`` is forced on). Tensors may be CPU tensors. The call runs under
    ``torch.no_grad()`` (the inference graph) unless ``training=True``.
    """
    capture = GraphCapture(fn, dynamic=dynamic, config=config, fullgraph=fullgraph, training=training)
    capture(*args, mark_dynamic=mark_dynamic, **kwargs)
    return capture.result


# --- the path without Dynamo --------------------------------------------------------------------


def _argument_names(fn: Callable, count: int) -> List[str]:
    """Names for ``fn``'s first ``count`` positional arguments, as Dynamo would name them."""
    try:
        params = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"input{i}" for i in range(count)]


def lower_fx(fn: Callable, *args: Any, dynamic: bool = False, config: Any = None) -> CapturedGraph:
    """Trace ``fn`` with ``make_fx`` on fake copies of ``args`` and lower it to one GE graph.

    ``dynamic=True`` traces with symbolic shapes (every dim of every tensor input dynamic).
    Skips Dynamo and AOTAutograd: the aten graph is what ``fn`` calls, not functionalised or
    decomposed, so use it for single ops; use :func:`capture_ge_graphs` for user functions.
    """
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    torchair = import_torchair()
    _interception.install_capture_hook(_record)

    def as_tuple(*inputs: Any) -> Any:
        # torchair's output converter expects what AOTAutograd gives it: a tuple of outputs.
        out = fn(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    gm = make_fx(as_tuple, tracing_mode="symbolic" if dynamic else "fake")(*args)
    example_inputs = [node.meta["val"] for node in gm.graph.nodes if node.op == "placeholder"]
    result = CaptureResult(fx_graphs=[gm], pending_input_names=_argument_names(fn, len(example_inputs)))
    with _Recording(result):
        fake_mode = torch._guards.detect_fake_mode(example_inputs)
        with fake_mode if fake_mode is not None else contextlib.nullcontext():
            torchair.get_compiler(_eager_config(config))(gm, example_inputs)
    return result.graph
