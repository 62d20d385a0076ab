"""CANN-less GE graph capture for tests: torchair's real FX -> GE lowering, on any Linux box.

On a machine with torch-npu (``pip install torch-npu==2.13.0 protobuf``) and a C compiler but
no CANN, :func:`import_torchair` makes torchair importable (generated stub libraries for the
CANN sonames, cached under ``$TORCHAIR_PLUGIN_CACHE_DIR`` or ``$XDG_CACHE_HOME/torchair-plugin``
or ``~/.cache/torchair-plugin``) and neutralises the few calls into GE. Where CANN is installed
nothing is stubbed or patched. Then:

    from torchair_plugin.testing import capture_ge_graphs
    result = capture_ge_graphs(fn, x, y, dynamic=True)
    assert result.fx_graph_count == 1
    print(result.graph.text)          # stable readable form (graph_text)
    result.graph.graph_def            # raw ge_ir GraphDef protobuf

Golden-file assertions for pytest live in :mod:`torchair_plugin.testing.pytest_plugin`.
Importing this package imports neither torch nor torchair.
"""

from torchair_plugin.testing._stubs import cache_problem as stub_cache_problem
from torchair_plugin.testing._stubs import trust_problem as stub_cache_trust_problem
from torchair_plugin.testing._torchair_import import (
    CannLessUnavailable,
    Mode,
    current_mode,
    decide_mode,
    describe_capture,
    fallback_reason,
    import_torchair,
    stub_libraries,
)
from torchair_plugin.testing.graph_text import OP_IRS, OpIR, register_op_ir

__all__ = [
    "AclCaptureResult",
    "AclCapturedGraph",
    "AclGraphCapture",
    "CannLessUnavailable",
    "CaptureResult",
    "CapturedGraph",
    "GraphCapture",
    "Mode",
    "OP_IRS",
    "OpIR",
    "available_aclgraph_modes",
    "capture_aclgraph_graphs",
    "capture_ge_graphs",
    "current_mode",
    "decide_mode",
    "describe_capture",
    "fallback_reason",
    "import_torchair",
    "lower_fx",
    "register_op_ir",
    "stub_cache_problem",
    "stub_cache_trust_problem",
    "stub_libraries",
]

_CAPTURE_NAMES = {"CaptureResult", "CapturedGraph", "GraphCapture", "capture_ge_graphs", "lower_fx"}
_ACLGRAPH_NAMES = {
    "AclCaptureResult": "AclCaptureResult",
    "AclCapturedGraph": "AclCapturedGraph",
    "AclGraphCapture": "AclGraphCapture",
    "capture_aclgraph_graphs": "capture_aclgraph_graphs",
    "available_aclgraph_modes": "available_modes",
}


def __getattr__(name):
    # capture.py is light too, but keep one place that decides what loads eagerly.
    if name in _CAPTURE_NAMES:
        from torchair_plugin.testing import capture

        return getattr(capture, name)
    if name in _ACLGRAPH_NAMES:
        from torchair_plugin.testing import aclgraph_capture

        return getattr(aclgraph_capture, _ACLGRAPH_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
