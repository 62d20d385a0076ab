"""Capture the FX graphs torchair's aclgraph modes would record into ACL graphs, without an NPU.

torchair's ``mode="reduce-overhead"`` and torch_npu's ``npugraph_ex`` backend build no GE graph:
they run torchair's FX passes over the AOT graph and capture the result with
``torch_npu.npu.NPUGraph`` on its first call. :func:`capture_aclgraph_graphs` /
:class:`AclGraphCapture` compile with the real backend and take the FX graph at the point the
device capture would start: torchair hands it, passes done, to an ``AclGraph`` together with
what it decided per input (read by address, or copied in before every replay). While a capture
is active a stand-in takes that ``AclGraph``'s place (``testing._interception``): it keeps the
graph and the per-input decisions, and runs the FX graph eagerly on CPU instead of capturing.

On each captured graph, and on the result:

- the stable text form (:attr:`AclCapturedGraph.text`, for goldens);
- which inputs are static (:attr:`AclCapturedGraph.static_inputs`: Parameters, buffers,
  ``mark_static_address``) and which are copied in at every replay;
- host syncs (:attr:`AclCaptureResult.host_syncs`): ops in the captured region that make the host
  wait for the device (``aten._local_scalar_dense`` from ``.item()``, ops whose output shape
  depends on data, copies to CPU), and graph breaks Dynamo made at one, each with the user's
  source line;
- static inputs whose storage changed between calls (:attr:`AclCaptureResult.static_input_changes`,
  also a :class:`StaticInputChanged` warning): the captured graph reads the old address;
- graph breaks and recompiles with their reasons, as for GE capture.

Needs the real torch_npu (over CANN stubs where there is no CANN): both modes import it.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from torchair_plugin import _upstream
from torchair_plugin.testing import _interception, graph_text
from torchair_plugin.testing._torchair_import import Mode, current_mode, import_torchair
from torchair_plugin.testing.capture import MarkDynamic, _counted_call

REDUCE_OVERHEAD = "reduce-overhead"
NPUGRAPH_EX = _upstream.NPUGRAPH_EX
MODES = (REDUCE_OVERHEAD, NPUGRAPH_EX)

# How torchair treats each graph input.
STATIC = "static"  # read by address (Parameter, buffer, mark_static_address): update it in place
COPIED = "copied"  # copied into the graph's own buffer before every replay: rebinding is fine
MUTATED = "mutated"  # written by the graph, read by address; a new address recaptures
SYMBOL = "symbol"  # a symbolic size or int


class StaticInputChanged(UserWarning):
    """A static input of a captured graph came with new storage: the recorded graph reads the old one."""


# --- what one capture saw -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceLine:
    """A line of the user's code, from the stack Dynamo recorded."""

    filename: str
    lineno: int
    code: str

    def __str__(self) -> str:
        return f"{os.path.basename(self.filename)}:{self.lineno}: {self.code}"


@dataclass(frozen=True)
class HostSync:
    """Something that makes the host wait for the device, inside (or at the edge of) a captured region.

    ``in_graph``: inside a captured FX graph (the NPU cannot capture a host sync: capture fails,
    or the value read at capture time is replayed); otherwise Dynamo broke the graph there, and
    the sync runs eagerly between two captured graphs, each replay waiting for it.
    """

    what: str
    source: Optional[SourceLine]
    in_graph: bool
    graph: Optional[int] = None  # in_graph: the captured graph's index in the result

    def __str__(self) -> str:
        where = f"in captured graph {self.graph}" if self.in_graph else "between captured graphs"
        return f"{self.what} ({where}) at {self.source or '<unknown source>'}"


@dataclass(frozen=True)
class GraphInput:
    """One input of a captured FX graph: ``name`` as the user knows it (``ids``, ``self.table``)."""

    index: int
    name: str
    kind: str  # STATIC, COPIED, MUTATED or SYMBOL
    why: str = ""  # for STATIC: "parameter", "buffer" or "mark_static_address"
    meta: str = ""  # dtype and shape, ``int32[s0, 8]``, or ``sym s0``


@dataclass
class AclCapturedGraph:
    """One FX graph as torchair would capture it: the ``GraphModule`` after torchair's passes, its
    inputs as torchair classified them, and the options the ACL graph would be built with."""

    graph_module: Any
    inputs: List[GraphInput]
    options: Dict[str, str]
    host_syncs: List[HostSync] = field(default_factory=list)

    @property
    def static_inputs(self) -> List[str]:
        """Inputs torchair reads by address: a rebound tensor there is not seen by a replay."""
        return [i.name for i in self.inputs if i.kind == STATIC]

    @property
    def copied_inputs(self) -> List[str]:
        return [i.name for i in self.inputs if i.kind == COPIED]

    @property
    def frozen(self) -> bool:
        """Whether static inputs' addresses are left out of the graph key (``frozen_parameter``):
        a new address then replays the old one instead of capturing a new graph."""
        # reduce-overhead writes "1"/"0", npugraph_ex "True"/"False"
        return str(self.options.get(_upstream.ACL_FROZEN_OPTION)).lower() in ("1", "true")

    @property
    def text(self) -> str:
        """The stable readable form, for golden files and diffs (see :func:`graph_to_text`)."""
        return graph_to_text(self)

    def op_targets(self) -> List[str]:
        return [_target_name(n.target) for n in self.graph_module.graph.nodes if n.op == "call_function"]

    def __repr__(self) -> str:
        return f"AclCapturedGraph({len(self.op_targets())} ops, static inputs {self.static_inputs})"


@dataclass
class AclCaptureResult:
    """What one aclgraph capture saw; the conventions of :class:`~torchair_plugin.testing.CaptureResult`."""

    mode: str
    graphs: List[AclCapturedGraph] = field(default_factory=list)
    fx_graphs: List[Any] = field(default_factory=list)  # Dynamo's GraphModules, one per compile
    pending_input_names: Optional[List[Tuple[str, Optional[str], Any]]] = field(default=None, repr=False)
    graph_breaks: int = 0
    # One line per graph break: Dynamo's reason and the user's line (``... at model.py:12: ...``).
    graph_break_reasons: List[str] = field(default_factory=list)
    recompile_reasons: List[str] = field(default_factory=list)
    host_syncs: List[HostSync] = field(default_factory=list)
    static_input_changes: List[str] = field(default_factory=list)
    outputs: Any = None

    @property
    def fx_graph_count(self) -> int:
        """FX graphs compiled by the backend (graph breaks and recompiles each add one)."""
        return len(self.fx_graphs)

    def summary(self) -> str:
        lines = [
            f"{self.mode}: {self.fx_graph_count} FX graph(s), {len(self.graphs)} ACL graph(s) to capture, "
            f"{self.graph_breaks} graph break(s), {len(self.recompile_reasons)} recompile(s), "
            f"{len(self.host_syncs)} host sync(s)"
        ]
        lines += [f"  graph break: {reason}" for reason in self.graph_break_reasons]
        lines += [f"  recompiled because {reason}" for reason in self.recompile_reasons]
        lines += [f"  host sync: {sync}" for sync in self.host_syncs]
        lines += [f"  {change}" for change in self.static_input_changes]
        return "\n".join(lines)

    @property
    def graph(self) -> AclCapturedGraph:
        """The only captured graph; AssertionError (with the summary) when there is not exactly one."""
        if len(self.graphs) != 1:
            raise AssertionError(f"expected exactly one ACL graph, captured {len(self.graphs)}: {self.summary()}")
        return self.graphs[0]


# --- which modes this process can capture -------------------------------------------------------------


def mode_problem(mode: str) -> Optional[str]:
    """Why ``mode`` cannot be captured here, or None where it can. Imports torchair (capture setup)."""
    if mode not in MODES:
        raise ValueError(f"unknown aclgraph mode {mode!r}: one of {', '.join(MODES)}")
    import_torchair()
    if current_mode() not in (Mode.REAL_TORCH_NPU, Mode.NATIVE):
        return (
            f"{mode} imports torch_npu, which cannot load here (capture runs on stand-ins for it: "
            f"{current_mode().value})"
        )
    try:
        found = importlib.util.find_spec(_upstream.acl_converter_module(mode)) is not None
    except (ImportError, AttributeError, ValueError):
        found = False
    if not found:
        return f"the installed torch-npu has no {mode} ({_upstream.acl_converter_module(mode)} is absent)"
    return None


def available_modes() -> List[str]:
    """The aclgraph modes this process can capture (the installed torch-npu's, with its torch_npu loaded)."""
    return [mode for mode in MODES if mode_problem(mode) is None]


# --- the stand-in for AclGraph --------------------------------------------------------------------------

_active = threading.local()  # .stack: AclCaptureResults receiving graphs on this thread


def _current() -> Optional[AclCaptureResult]:
    stack = getattr(_active, "stack", None)
    return stack[-1] if stack else None


def _make_acl_graph(real: type, *args: Any, fx_graph: Any = None, config: Any = None, **kwargs: Any) -> Any:
    result = _current()
    if result is None or fx_graph is None:
        return real(*args, fx_graph=fx_graph, config=config, **kwargs)
    return _RecordedAclGraph(result, fx_graph, dict(config or {}))


class _RecordedAclGraph:
    """Takes the place of torchair's ``AclGraph`` for one FX graph: records it when torchair loads
    it, and on each call runs the FX graph eagerly instead of capturing and replaying it."""

    def __init__(self, result: AclCaptureResult, fx_graph: Any, options: Dict[str, str]) -> None:
        self._result = result
        self._fx_graph = fx_graph
        self._options = options
        self._sources = result.pending_input_names
        self._captured: Optional[AclCapturedGraph] = None
        self._index = -1
        self._static_storages: Dict[int, int] = {}
        self._calls = 0

    @property
    def fx_graph(self) -> Any:
        return self._fx_graph

    def load(self, cache_info: Any) -> None:
        graph = AclCapturedGraph(
            self._fx_graph, _classify_inputs(self._fx_graph, cache_info, self._sources), self._options
        )
        self._index = index = len(self._result.graphs)
        graph.host_syncs = list(_host_syncs_in_graph(self._fx_graph, index))
        self._result.graphs.append(graph)
        self._result.host_syncs += graph.host_syncs
        self._captured = graph

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._calls += 1
        if self._captured is not None:
            self._check_static_storage(args)
        return self._fx_graph(*args, **kwargs)

    def _check_static_storage(self, args: Sequence[Any]) -> None:
        graph = self._captured
        assert graph is not None  # called once the graph was captured
        for graph_input in graph.inputs:
            if graph_input.kind != STATIC or graph_input.index >= len(args):
                continue
            storage = args[graph_input.index].untyped_storage().data_ptr()
            first = self._static_storages.setdefault(graph_input.index, storage)
            if storage == first:
                continue
            effect = (
                "replays keep reading the old storage (frozen_parameter: the address is not in the graph "
                "key), so the graph silently computes with the old values"
                if graph.frozen
                else "torchair captures a new ACL graph for the new address (its graph key holds static "
                "inputs' addresses), and every later rebind another, up to static_capture_size_limit="
                f"{graph.options.get(_upstream.ACL_CAPTURE_LIMIT_OPTION, '?')}"
            )
            message = (
                f"{self._result.mode} graph {self._index}: static input "
                f"{graph_input.name!r} ({graph_input.why}) has new storage on call {self._calls}: {effect}. "
                f"Update it in place (copy_) instead of rebinding it."
            )
            self._static_storages[graph_input.index] = storage
            self._result.static_input_changes.append(message)
            warnings.warn(message, StaticInputChanged, stacklevel=2)


def _static_why(source: Optional[str], example: Any) -> str:
    import torch

    if isinstance(example, torch.nn.Parameter) or (source and "_parameters[" in source):
        return "parameter"
    if source and "_buffers[" in source:
        return "buffer"
    return "mark_static_address"


def _classify_inputs(
    fx_graph: Any, cache_info: Any, sources: Optional[List[Tuple[str, Optional[str], Any]]]
) -> List[GraphInput]:
    """The captured graph's inputs, named after Dynamo's, as torchair decided to feed each.

    In an inference graph AOTAutograd's inputs are Dynamo's, in order (parameters and buffers
    lifted); where the counts differ the placeholders keep their own names.
    """
    import torch

    placeholders = [n for n in fx_graph.graph.nodes if n.op == "placeholder"]
    if sources is None or len(sources) != len(placeholders):
        sources = [(n.name, None, None) for n in placeholders]
    static = set(getattr(cache_info, _upstream.ACL_STATIC_INPUTS) or ())
    mutated = set(getattr(cache_info, _upstream.ACL_MUTATED_INPUTS) or ())
    inputs = []
    for index, (node, (name, source, example)) in enumerate(zip(placeholders, sources)):
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            kind, why = SYMBOL, ""
        elif index in static:
            kind, why = STATIC, _static_why(source, example)
        elif node.target in mutated or node.name in mutated:
            kind, why = MUTATED, ""
        else:
            kind, why = COPIED, ""
        inputs.append(GraphInput(index, name, kind, why, _meta_text(value, _SymbolNames())))
    return inputs


# --- host syncs -------------------------------------------------------------------------------------------

# Ops that copy a device value to the host, whatever their output (the rest are found by the
# unbacked symbol their output introduces: a shape or a number only the device's data decides).
_HOST_COPY_TARGETS = {"aten._local_scalar_dense", "aten.item", "aten._assert_scalar"}
# Graph-break reasons that are a host sync in the user's code.
_SYNC_BREAK = re.compile(
    r"\.item\(|Tensor\.item|tolist|_local_scalar_dense|nonzero|data.dependent|"
    r"\.numpy\(|Tensor\.numpy|Tensor\.cpu|\.cpu\(|dynamic.shape|unbacked",
    re.IGNORECASE,
)
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in [^\n]*\n(?P<code>[^\n]*)')


def _source_line(stack_trace: Optional[str]) -> Optional[SourceLine]:
    """The innermost user frame of a node's ``stack_trace`` (Dynamo records the user's frames)."""
    frames = list(_FRAME.finditer(stack_trace or ""))
    if not frames:
        return None
    last = frames[-1]
    return SourceLine(last.group("file"), int(last.group("line")), last.group("code").strip())


def _unbacked(value: Any) -> set:
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    try:
        return set(free_unbacked_symbols(value))
    except Exception:  # noqa: BLE001 - a value free_unbacked_symbols does not walk has none
        return set()


def _to_cpu(node: Any) -> bool:
    device = node.kwargs.get("device")
    return (
        _target_name(node.target) in ("aten._to_copy", "prims.device_put")
        and str(device) == "cpu"
        and str(getattr(node.args[0].meta.get("val"), "device", "cpu")) != "cpu"
    )


def _host_syncs_in_graph(fx_graph: Any, index: int) -> Iterator[HostSync]:
    seen_unbacked: set = set()
    for node in fx_graph.graph.nodes:
        if node.op == "placeholder":
            seen_unbacked |= _unbacked(node.meta.get("val"))
            continue
        if node.op != "call_function":
            continue
        target = _target_name(node.target)
        new = _unbacked(node.meta.get("val")) - seen_unbacked
        seen_unbacked |= new
        if target in _HOST_COPY_TARGETS or new or _to_cpu(node):
            why = (
                "copies a device value to the host"
                if target in _HOST_COPY_TARGETS or not new
                else "output shape depends on the data"
            )
            yield HostSync(f"{target}: {why}", _source_line(node.meta.get("stack_trace")), True, index)


def _graph_break_count() -> int:
    from torch._dynamo.utils import graph_break_reasons

    return len(graph_break_reasons)


def _new_graph_breaks(before: int) -> Tuple[List[str], List[HostSync]]:
    """The graph breaks Dynamo recorded since ``before`` (``torch._dynamo.utils.graph_break_reasons``,
    cleared by ``torch._dynamo.reset``; ``torch._dynamo.explain`` reads the same records), one line
    each with the user's line, and the host syncs among them. A break with no op before it compiles
    no graph, so the records are read rather than the graphs handed to the backend."""
    from torch._dynamo.utils import graph_break_reasons

    lines: List[str] = []
    syncs: List[HostSync] = []
    for record in graph_break_reasons[before:]:
        frames = list(getattr(record, "user_stack", None) or [])
        source = SourceLine(frames[-1].filename, frames[-1].lineno, (frames[-1].line or "").strip()) if frames else None
        # "<what> Explanation: ... Hint: ... Developer debug context: <op> For more details ..." (torch 2.8+)
        text = " ".join(str(record.reason).split())
        what = text.split(" Explanation:")[0]
        context = re.search(r"Developer debug context: (.*?)(?: For more details|$)", text)
        if context and context.group(1) and what != text:
            what += f" [{context.group(1)}]"
        line = f"{what} at {source}" if source else what
        if line in lines:
            continue  # Dynamo restarts the frame after a break and may record it again
        lines.append(line)
        if _SYNC_BREAK.search(text):
            syncs.append(HostSync(f"graph break: {what}", source, False))
    return lines, syncs


# --- the text form ---------------------------------------------------------------------------------------


class _SymbolNames:
    """Renames symbols in order of first appearance, per kind (``s0`` sizes, ``u0`` unbacked ints,
    ``zuf0`` unbacked floats): torch numbers them by a counter or a hash, which differ between
    versions and runs."""

    _SYMBOL = re.compile(r"\b(zuf|zf|u|s)\d+\b")

    def __init__(self) -> None:
        self._names: Dict[str, str] = {}
        self._counts: Dict[str, int] = {}

    def __call__(self, text: str) -> str:
        def rename(match: "re.Match[str]") -> str:
            name, kind = match.group(0), match.group(1)
            if name not in self._names:
                self._names[name] = f"{kind}{self._counts.get(kind, 0)}"
                self._counts[kind] = self._counts.get(kind, 0) + 1
            return self._names[name]

        return self._SYMBOL.sub(rename, text)


def _meta_text(value: Any, symbols: _SymbolNames) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        dims = ", ".join(symbols(str(d)) for d in value.shape)
        return f"{str(value.dtype).replace('torch.', '')}[{dims}]"
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return f"sym {symbols(str(value.node.expr))}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_meta_text(v, symbols) for v in value) + ")"
    if value is None:
        return "?"
    return type(value).__name__


def _target_name(target: Any) -> str:
    """``aten.add.Tensor``, ``npu.npu_moe_update_expert.default``: an OpOverload's own name; else
    the function's name (``getitem``)."""
    name = getattr(target, "_schema", None) and str(target)
    if name:
        return name.removesuffix(".default")
    return getattr(target, "__name__", str(target))


def _short_name(target: Any) -> str:
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", None) or getattr(target, "__name__", None) or "op"


def _arg_text(value: Any, names: Dict[Any, str]) -> str:
    import torch

    if isinstance(value, torch.fx.Node):
        return names.get(value, value.name)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_arg_text(v, names) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, (torch.device, torch.memory_format, torch.layout)):
        return str(value)
    return repr(value)


def graph_to_text(graph: AclCapturedGraph) -> str:
    """One line per input (tensors by name, then symbols), op and output (ops in graph order: the
    order torchair would run them).

    ``inputs``: ``<name>: <dtype>[<shape>] <kind>`` (kind ``static(buffer)`` etc.); ``ops``:
    ``<op>_<k> = <target>(<args>) -> <dtype>[<shape>]``, ops renamed by their place among ops of
    the same name, inputs by the user's names, symbols renamed in order of first appearance,
    keyword arguments sorted; then the options that decide what a replay reads (``frozen_parameter``).
    """
    symbols = _SymbolNames()
    names: Dict[Any, str] = {}
    counts: Dict[str, int] = {}
    placeholders = [n for n in graph.graph_module.graph.nodes if n.op == "placeholder"]
    lines = [f"options: {_upstream.ACL_FROZEN_OPTION}={int(graph.frozen)}", "inputs:"]
    # Tensors sorted by name (the order Dynamo gives graph inputs differs between torch versions),
    # then symbols by their new name: which tensor's size Dynamo takes a symbol from differs too.
    pairs = sorted(zip(placeholders, graph.inputs), key=lambda pair: pair[1].name)
    for node, graph_input in [pair for pair in pairs if pair[1].kind != SYMBOL]:
        names[node] = graph_input.name
        kind = f"{graph_input.kind}({graph_input.why})" if graph_input.why else graph_input.kind
        lines.append(f"  {graph_input.name}: {_meta_text(node.meta.get('val'), symbols)} {kind}")
    symbol_lines = []
    for node, _ in [pair for pair in pairs if pair[1].kind == SYMBOL]:
        names[node] = _meta_text(node.meta.get("val"), symbols).removeprefix("sym ")
        symbol_lines.append(f"  {names[node]}: {SYMBOL}")
    lines += sorted(symbol_lines)
    lines.append("ops:")
    for node in graph.graph_module.graph.nodes:
        if node.op in ("call_function", "call_method", "call_module", "get_attr"):
            short = _short_name(node.target) if node.op == "call_function" else str(node.target)
            k = counts.get(short, 0)
            counts[short] = k + 1
            names[node] = f"{short}_{k}"
            args = [_arg_text(a, names) for a in node.args]
            args += [f"{key}={_arg_text(value, names)}" for key, value in sorted(node.kwargs.items())]
            target = _target_name(node.target) if node.op == "call_function" else f"{node.op}:{node.target}"
            lines.append(
                f"  {names[node]} = {target}({', '.join(args)}) -> {_meta_text(node.meta.get('val'), symbols)}"
            )
        elif node.op == "output":
            lines.append(f"outputs: {_arg_text(node.args[0], names)}")
    return "\n".join(lines) + "\n"


# --- the Dynamo path ----------------------------------------------------------------------------------------


def _backend(mode: str, config: Any, options: Optional[Dict[str, Any]]) -> Callable:
    import torch

    torchair = import_torchair()
    if mode == REDUCE_OVERHEAD:
        if options:
            raise ValueError("options= is for npugraph_ex; give reduce-overhead a torchair.CompilerConfig (config=)")
        cfg = torchair.CompilerConfig() if config is None else copy.deepcopy(config)
        cfg.mode = REDUCE_OVERHEAD
        return torchair.get_npu_backend(compiler_config=cfg)
    if config is not None:
        raise ValueError("config= is for reduce-overhead; give npugraph_ex its options as a dict (options=)")
    # torchair's one-time patches register a Python kernel for aten.to.other at AutogradPrivateUse1
    # without asking whether one exists; npugraph_ex's copy of them asks. Run torchair's first, so
    # that a process compiling with npugraph_ex before torchair can still compile with torchair.
    torchair.get_npu_backend(compiler_config=torchair.CompilerConfig())
    backend = torch._dynamo.lookup_backend(NPUGRAPH_EX)
    if not options:
        return backend
    return lambda gm, example_inputs: backend(gm, example_inputs, options=dict(options))  # type: ignore[call-arg]


class AclGraphCapture:
    """``torch.compile(fn)`` with an aclgraph backend, recording every graph torchair would capture.

    ``mode``: ``"reduce-overhead"`` (torchair's ``get_npu_backend`` with that mode; ``config`` a
    ``torchair.CompilerConfig``, copied) or ``"npugraph_ex"`` (torch_npu's backend; ``options`` its
    options dict). Call it like ``fn``: each call runs the captured FX graphs eagerly on CPU and adds
    what was compiled to :attr:`result`. Otherwise as :class:`~torchair_plugin.testing.GraphCapture`
    (``reset``, ``training``, ``fullgraph``, ``dynamic``).
    """

    def __init__(
        self,
        fn: Callable,
        *,
        mode: str = REDUCE_OVERHEAD,
        dynamic: Optional[bool] = False,
        config: Any = None,
        options: Optional[Dict[str, Any]] = None,
        fullgraph: bool = False,
        reset: bool = True,
        training: bool = False,
    ) -> None:
        import torch

        problem = mode_problem(mode)
        if problem is not None:
            raise RuntimeError(f"cannot capture {mode} graphs here: {problem}")
        _interception.install_aclgraph_hook(mode, _make_acl_graph)
        _interception.install_host_stream(lambda: _current() is not None)
        if reset:
            torch._dynamo.reset()
        self.training = training
        self.result = AclCaptureResult(mode)
        backend = _backend(mode, config, options)

        def counting_backend(gm: Any, example_inputs: Any) -> Any:
            self.result.fx_graphs.append(gm)
            self.result.pending_input_names = _dynamo_inputs(gm)
            return backend(gm, example_inputs)

        self._compiled = torch.compile(fn, backend=counting_backend, dynamic=dynamic, fullgraph=fullgraph)

    def __call__(self, *args: Any, mark_dynamic: Optional[MarkDynamic] = None, **kwargs: Any) -> Any:
        reasons_before = _graph_break_count()
        with _counted_call(self.result, args, mark_dynamic, self.training, _active):
            self.result.outputs = self._compiled(*args, **kwargs)
        reasons, syncs = _new_graph_breaks(reasons_before)
        self.result.graph_break_reasons += reasons
        self.result.host_syncs += syncs
        return self.result.outputs


def _dynamo_inputs(gm: Any) -> List[Tuple[str, Optional[str], Any]]:
    """(readable name, Dynamo source name, example value) of each of a Dynamo graph's inputs."""
    readable = graph_text.dynamo_input_names(gm)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    sources = graph_text.dynamo_input_sources(gm)
    return [(name, raw, _example(node)) for name, (_, raw), node in zip(readable, sources, placeholders)]


def _example(placeholder: Any) -> Any:
    """The tensor Dynamo saw for a placeholder (it holds it weakly: None once it is gone)."""
    try:
        return getattr(placeholder.meta.get("grapharg"), "example", None)
    except Exception:  # noqa: BLE001 - the weak reference died
        return None


def capture_aclgraph_graphs(
    fn: Callable,
    *args: Any,
    mode: str = REDUCE_OVERHEAD,
    dynamic: Optional[bool] = False,
    mark_dynamic: Optional[MarkDynamic] = None,
    config: Any = None,
    options: Optional[Dict[str, Any]] = None,
    fullgraph: bool = False,
    training: bool = False,
    **kwargs: Any,
) -> AclCaptureResult:
    """Compile ``fn`` with an aclgraph backend (``mode``), call it once on ``args``, return what
    torchair would capture. Arguments as :func:`~torchair_plugin.testing.capture_ge_graphs`, plus
    ``mode`` and ``options`` (see :class:`AclGraphCapture`)."""
    capture = AclGraphCapture(
        fn, mode=mode, dynamic=dynamic, config=config, options=options, fullgraph=fullgraph, training=training
    )
    capture(*args, mark_dynamic=mark_dynamic, **kwargs)
    return capture.result
