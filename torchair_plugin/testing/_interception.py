"""The few torchair entry points that reach CANN during FX -> GE lowering, replaced.

Only applied in a CANN-less process (see :mod:`._torchair_import`). Each replacement is the
smallest one that keeps torchair's own Python lowering path intact; they are all torchair
internals (there is no public hook for "lower but do not initialise GE"), listed here with the
reason, so that a torchair upgrade that moves one of them fails in this one place.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, List, Tuple


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


def apply(torchair: Any) -> List[Callable[[], None]]:
    """Patch torchair in place; return the undo callables (run them in reverse order).

    On failure, whatever was patched is restored before the exception propagates.
    """
    undo: List[Callable[[], None]] = []

    def patch(owner: Any, attr: str, value: Any) -> None:
        if isinstance(owner, str):
            owner = importlib.import_module(owner)
        old = owner.__dict__[attr]  # KeyError here means torchair moved it: fail loudly
        setattr(owner, attr, value)
        undo.append(lambda: setattr(owner, attr, old))

    fx2ge = "torchair._ge_concrete_graph.fx2ge_converter"
    try:
        # GeConcreteGraph.__init__ calls the name it imported into fx2ge_converter; generated
        # code and other callers import it from core._backend at call time.
        patch(fx2ge, "initialize_graph_engine", _no_graph_engine)
        patch("torchair.core._backend", "initialize_graph_engine", _no_graph_engine)
        # compat_ir.ge_op looks the name up at call time, so replacing the module attribute is
        # enough (the original is lru_cached; its cache is simply bypassed).
        patch("torchair._ge_concrete_graph.compat_ir", "is_cann_compat", _every_op_compatible)
        patch("torchair.ge.ge_custom", "_torchair", _RegisteredIrDefStandIn(importlib.import_module("torchair.core._torchair")))
        # Loading/running a graph is native and segfaults on stubs: turn that into an error.
        patch(importlib.import_module(fx2ge).GeConcreteGraph, "__call__", _refuse_to_run)
    except BaseException:
        for restore in reversed(undo):
            restore()
        raise
    return undo
