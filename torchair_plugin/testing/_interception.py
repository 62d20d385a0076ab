"""Every patch the plugin applies to torchair, each with its undo.

Two sets, both torchair internals named in :mod:`torchair_plugin._upstream` (there is no public
hook for "lower but do not initialise GE" or for "give me the lowered graph"):

- :func:`apply_cann_less`: the few entry points that reach CANN during FX -> GE lowering,
  replaced by the smallest stand-ins that keep torchair's own Python lowering path intact. Only
  in a CANN-less process (see :mod:`._torchair_import`).
- :func:`install_capture_hook`: ``GeConcreteGraph.optimize_graph_without_runtime`` wrapped to
  hand each lowered graph to capture; in every mode, once per process.

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
        patches.replace(*_upstream.CUSTOM_OP_NATIVE,
                        _RegisteredIrDefStandIn(importlib.import_module(_upstream.NATIVE_MODULE)))
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
