"""Every patch the plugin applies to torchair, each with its undo.

Three sets, all torchair internals named in :mod:`torchair_plugin._upstream` (there is no public
hook for "lower but do not initialise GE" or for "give me the lowered graph"):

- :func:`apply_cann_less`: the few entry points that reach CANN during FX -> GE lowering,
  replaced by the smallest stand-ins that keep torchair's own Python lowering path intact. Only
  in a CANN-less process (see :mod:`._torchair_import`).
- :func:`install_capture_hook`: ``GeConcreteGraph.optimize_graph_without_runtime`` wrapped to
  hand each lowered graph to capture; in every mode, once per process.
- :func:`install_aclgraph_hook`: for torchair's aclgraph modes (reduce-overhead, npugraph_ex),
  the ``AclGraph`` that would capture on the device, stood in for while a capture is active.

Each returns a :class:`Patches`; the process keeps them in its state, and ``undo()`` restores
what was there (newest first).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, List, Tuple

from torchair_plugin import _upstream
from torchair_plugin._process_state import STATE


class Patches:
    """Attributes replaced in torchair, and how to put each back."""

    def __init__(self) -> None:
        self._undo: List[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._undo)

    def replace(self, owner: Any, attr: str, value: Any) -> Any:
        """Set ``owner.attr`` (owner: an object or a module name); return what was there."""
        if isinstance(owner, str):
            owner = importlib.import_module(owner)
        old = owner.__dict__[attr]  # KeyError here means torchair moved it: fail loudly
        setattr(owner, attr, value)
        self._undo.append(lambda: setattr(owner, attr, old))
        return old

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


class _RegisteredIrDefStandIn:
    """Stands in for the native module as ``torchair.ge.ge_custom._torchair``.

    ``torchair.ge.custom_op`` first asks GE's operator registry (native, absent here) for the
    op's IR. Answering "registered, nothing declared" sends it down its plain ``ge_op`` path,
    which needs no native code. Every other attribute is the real module's.
    """

    def __init__(self, real: Any) -> None:
        self._real = real

    @staticmethod
    def get_registered_ir_def(op_type: str) -> Tuple[str, list, list, list]:
        return ("SUCCESS", [], [], [])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _no_graph_engine(*args: Any, **kwargs: Any) -> None:
    """GE initialisation is native (it crashes on stubs) and lowering does not need it."""


def _every_op_compatible(optype: str, runtime_optional_inputs: Any, runtime_optional_attrs: Any) -> str:
    """Native check of an op against the installed CANN's op registry; no CANN, no check.

    The empty string is torchair's "compatible" answer.
    """
    return ""


def _refuse_to_run(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(
        "a GE graph cannot run without CANN: compile with CompilerConfig().debug.run_eagerly = True "
        "(torchair_plugin.testing.capture_ge_graphs does) to lower the graph and run the FX graph eagerly"
    )


def _ge_concrete_graph() -> Any:
    return getattr(importlib.import_module(_upstream.FX2GE), _upstream.GE_CONCRETE_GRAPH)


def apply_cann_less() -> Patches:
    """Patch the imported torchair for lowering without CANN; on failure restore what was patched
    and raise."""
    patches = Patches()
    try:
        # GeConcreteGraph.__init__ calls the name it imported into fx2ge_converter; generated
        # code and other callers import it from core._backend at call time.
        patches.replace(*_upstream.GRAPH_ENGINE_INIT, _no_graph_engine)
        patches.replace(*_upstream.BACKEND_GRAPH_ENGINE_INIT, _no_graph_engine)
        # compat_ir.ge_op looks the name up at call time, so replacing the module attribute is
        # enough (the original is lru_cached; its cache is simply bypassed).
        patches.replace(*_upstream.CANN_COMPAT, _every_op_compatible)
        patches.replace(
            *_upstream.CUSTOM_OP_NATIVE, _RegisteredIrDefStandIn(importlib.import_module(_upstream.NATIVE_MODULE))
        )
        # Loading/running a graph is native and segfaults on stubs: turn that into an error.
        patches.replace(_ge_concrete_graph(), "__call__", _refuse_to_run)
    except BaseException:
        patches.undo()
        raise
    return patches


def install_capture_hook(on_graph: Callable[[Any], None]) -> Patches:
    """Wrap ``optimize_graph_without_runtime`` once per process: ``on_graph(graph_def)`` gets each
    lowered graph's GraphDef (the live object: copy it). Returns the process's hook patches."""
    with STATE.lock:
        if STATE.capture_hook is not None:
            return STATE.capture_hook
        graph_class = _ge_concrete_graph()
        original = graph_class.__dict__[_upstream.OPTIMIZE_GRAPH]

        @functools.wraps(original)
        def optimize_and_record(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            on_graph(_upstream.graph_def(self))
            return result

        patches = Patches()
        patches.replace(graph_class, _upstream.OPTIMIZE_GRAPH, optimize_and_record)
        STATE.capture_hook = patches
        return patches


def install_aclgraph_hook(mode: str, make_acl_graph: Callable[..., Any]) -> Patches:
    """Stand in, once per process and aclgraph mode, for the ``AclGraph`` its ``AclConcreteGraph``
    hands the final FX graph to (where the device capture would start).

    ``make_acl_graph(real_class, *args, **kwargs)`` builds what the concrete graph gets: the real
    ``AclGraph`` where no capture is active, a stand-in otherwise. ``AclConcreteGraph.codegen``
    answers None for a graph whose manager is not a real ``AclGraph``, so the compiled runner calls
    the concrete graph (and so the stand-in) rather than the source it would generate (which
    builds a real ``AclGraph`` and a ``torch.npu.Stream``). Returns the mode's hook patches.
    """
    with STATE.lock:
        if mode in STATE.aclgraph_hooks:
            return STATE.aclgraph_hooks[mode]
        module = importlib.import_module(_upstream.acl_converter_module(mode))
        real = module.__dict__[_upstream.ACL_GRAPH]
        concrete = module.__dict__[_upstream.ACL_CONCRETE_GRAPH]
        original_codegen = concrete.__dict__[_upstream.ACL_CODEGEN]

        @functools.wraps(real)
        def acl_graph(*args: Any, **kwargs: Any) -> Any:
            return make_acl_graph(real, *args, **kwargs)

        @functools.wraps(original_codegen)
        def codegen(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not isinstance(self.graph, real):
                return None
            return original_codegen(self, *args, **kwargs)

        patches = Patches()
        try:
            patches.replace(module, _upstream.ACL_GRAPH, acl_graph)
            patches.replace(concrete, _upstream.ACL_CODEGEN, codegen)
        except BaseException:
            patches.undo()
            raise
        STATE.aclgraph_hooks[mode] = patches
        return patches


class _HostStream:
    """What ``torch.npu.current_stream()`` answers during an aclgraph capture: the default stream's
    identity (a stream id torchair compares, never uses), without initialising a device."""

    stream_id = 0
    device_index = 0
    device_type = 0


def install_host_stream(active: Callable[[], bool]) -> Patches:
    """Wrap ``torch.npu.current_stream`` once per process: while ``active()`` it answers a
    :class:`_HostStream` instead of initialising the device. Returns the process's patches."""
    with STATE.lock:
        if "current_stream" in STATE.aclgraph_hooks:
            return STATE.aclgraph_hooks["current_stream"]
        module = importlib.import_module(_upstream.CURRENT_STREAM[0])
        original = module.__dict__[_upstream.CURRENT_STREAM[1]]

        @functools.wraps(original)
        def current_stream(*args: Any, **kwargs: Any) -> Any:
            return _HostStream() if active() else original(*args, **kwargs)

        patches = Patches()
        patches.replace(module, _upstream.CURRENT_STREAM[1], current_stream)
        STATE.aclgraph_hooks["current_stream"] = patches
        return patches
