"""Every private name of torch_npu and torchair the plugin relies on, and the versions it was seen on.

torch_npu and torchair offer no public hook for what the plugin does (register a converter
before torchair's own, lower a graph without initialising GE, read the lowered graph, run
torchair on a machine without CANN), so a few of their internals are used. They are all named
here, each as a :class:`Private`; code elsewhere takes the names from this module and never
spells a private torch_npu/torchair name itself (``tests/test_upstream.py`` checks both: that
every entry resolves in the installed torch-npu, and that no other module names one).
Supporting a new torch-npu starts and, ideally, ends here: run ``pytest tests/test_upstream.py``
against it.

``checked_on`` lists the torch-npu releases whose test suite exercised the name and passed (the
matrix of ``docs/compatibility.md``; releases 2.10 to 2.14 ran there without the real torch_npu,
on stand-ins, so what only the real torch_npu uses was not exercised by them). torch-npu 2.13.0
with torch 2.13.0's CPU build, the README's test setup, loads the real torch_npu; every entry
was resolved there by ``tests/test_upstream.py``.

The one reader of torch_npu's lazy ``torchair`` proxy is :func:`torchair_package`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

MATRIX = (
    "2.6.0.post5",
    "2.7.1.post11",
    "2.8.0.post5",
    "2.9.0.post9",
    "2.10.0.post7",
    "2.11.0.post3",
    "2.12.0.post3",
    "2.13.0",
    "2.14.0",
)
# The matrix rows that loaded the real torch_npu over CANN stubs, and the README's own setup.
REAL_TORCH_NPU = ("2.6.0.post5", "2.7.1.post11", "2.8.0.post5", "2.9.0.post9", "2.13.0")


@dataclass(frozen=True)
class Private:
    """One private name: ``module``, optionally ``:attribute`` (dotted for a class attribute),
    or a ``file`` path inside the torch_npu package."""

    name: str
    why: str
    checked_on: Tuple[str, ...] = MATRIX
    # "python": an importable name (tests/test_upstream.py resolves it); "file": a path under
    # torch_npu's directory; "runtime": exists only at run time (checked by its own test there).
    kind: str = "python"
    # False: used where the installed torch-npu has it, done without elsewhere.
    required: bool = True

    @property
    def module(self) -> str:
        return self.name.partition(":")[0]

    @property
    def attribute(self) -> str:
        return self.name.partition(":")[2]


# --- torch_npu ------------------------------------------------------------------------------------

# torch_npu puts a lazy proxy (``_LazyTorchair``) in sys.modules["torchair"]; the real package is
# imported as this name, and the proxy keeps it in this instance slot once loaded.
TORCHAIR_REAL_NAME = "torch_npu.dynamo.torchair"
PROXY_SLOT = "_torchair"
# torchair lives in this folder of torch_npu; with the folder on sys.path it imports as ``torchair``.
DYNAMO_DIR = "dynamo"
NATIVE_CONVERTER_FILE = "dynamo/torchair/_ge_concrete_graph/ge_converter/custom/npu_moe_update_expert.py"
COMPANION_SCHEMA_FILE = "csrc/aten/npu_native_functions_by_codegen.yaml"
COMPANION_META_FILE = "op_plugin/meta/_meta_registrations.py"
# The torch_npu helpers the companion ops' meta functions call (stood in for, see companion_ops).
COMPANION_META_HELPERS = ("ops_error", "ErrCode", "get_soc_version")
# Opened with dlopen by torch_npu at import time (not a DT_NEEDED entry), by 2.6.
DLOPENED_SONAMES = ("libopapi.so",)

# --- torchair ---------------------------------------------------------------------------------------

# torchair's own converters for custom (torch_npu) ops, imported lazily on a compile's first
# converter lookup; each of its modules registers one, last registration wins.
CUSTOM_CONVERTERS = "torchair._ge_concrete_graph.ge_converter.custom"
NATIVE_CONVERTER_MODULE = CUSTOM_CONVERTERS + ".npu_moe_update_expert"
V2_CONVERTER_MODULES = (
    CUSTOM_CONVERTERS + ".moe_distribute_dispatch_v2",
    CUSTOM_CONVERTERS + ".moe_distribute_combine_v2",
)
V1_CONVERTER_MODULES = (CUSTOM_CONVERTERS + ".moe_distribute_dispatch", CUSTOM_CONVERTERS + ".moe_distribute_combine")
COMPANION_CONVERTER_MODULES = V2_CONVERTER_MODULES + V1_CONVERTER_MODULES
# The converter registry: an attribute of the OpOverload, set by register_fx_node_ge_converter.
CONVERTER_ATTRIBUTE = "_ge_converter"
FX2GE = "torchair._ge_concrete_graph.fx2ge_converter"
GE_CONCRETE_GRAPH = "GeConcreteGraph"
GRAPH_ENGINE_INIT = (FX2GE, "initialize_graph_engine")
BACKEND_GRAPH_ENGINE_INIT = ("torchair.core._backend", "initialize_graph_engine")
CANN_COMPAT = ("torchair._ge_concrete_graph.compat_ir", "is_cann_compat")
CUSTOM_OP_NATIVE = ("torchair.ge.ge_custom", "_torchair")
NATIVE_MODULE = "torchair.core._torchair"
# Where the lowered graph is final (what torchair would hand to GE), and its protobuf.
OPTIMIZE_GRAPH = "optimize_graph_without_runtime"
GRAPH_PROTO = "_proto"
PBTXT = ("torchair._ge_concrete_graph.utils", "convert_to_pbtxt")
# The desc attribute torchair writes each tensor's torch shape into (op output descs carry no other).
META_DESC_ATTR = "_meta"
# The warning torchair's custom-converter package prints per module whose op this torch lacks.
CUSTOM_CONVERTER_IMPORT_WARNING = r"Failed to import torchair\._ge_concrete_graph\.ge_converter\.custom\."

# --- torchair's aclgraph modes (reduce-overhead, and torch_npu's npugraph_ex backend) ----------------

# Both compile the FX graph into an AclConcreteGraph, whose optimize_graph_without_runtime runs
# torchair's FX passes, then hands the final FX graph to an AclGraph (constructed by the name
# imported into fx2acl_converter) and calls its load() with what the capture needs to know per
# input; the device capture (torch_npu.npu.NPUGraph) starts at that AclGraph's first call. The
# compiled runner first asks AclConcreteGraph.codegen for Python source and runs that instead
# (which builds another AclGraph and a torch.npu.Stream): None means "no codegen, run me".
# Resolved where the mode can be captured (tests/test_aclgraph_capture.py), since which torch-npu
# has which mode is what the capture reports (aclgraph_capture.available_modes).
# npugraph_ex is a copy of torchair inside torch_npu, importable as the top-level package below
# (a lazy proxy of torch_npu's, like torchair's) and registered as a Dynamo backend of that name.
NPUGRAPH_EX = "npugraph_ex"
ACLGRAPH_PACKAGES = {"reduce-overhead": "torchair", NPUGRAPH_EX: NPUGRAPH_EX}
ACL_CONVERTER_MODULE = "._acl_concrete_graph.fx2acl_converter"  # under either package
ACL_CONCRETE_GRAPH = "AclConcreteGraph"
ACL_GRAPH = "AclGraph"
ACL_CODEGEN = "codegen"
# Fields of the AclGraphCacheInfo given to AclGraph.load: positions of the inputs torchair reads
# by address (Parameters, buffers, mark_static_address), placeholder name -> position of those
# copied in before every replay, names of inputs the graph mutates, inputs that alias an output.
ACL_STATIC_INPUTS = "parameter_user_inputs"
ACL_COPIED_INPUTS = "user_inputs_mapping"
ACL_MUTATED_INPUTS = "mutated_user_inputs"
ACL_OUTPUT_ALIASES = "userinput_ref_with_output"
# Keys of the option dict AclGraph gets: "1" where static inputs leave the graph key (frozen).
ACL_FROZEN_OPTION = "frozen_parameter"
ACL_CAPTURE_LIMIT_OPTION = "static_capture_size_limit"
# Where tests/test_aclgraph_capture.py ran (the real torch_npu; torch-npu 2.6 has no npugraph_ex).
ACLGRAPH_CHECKED_ON = {
    "reduce-overhead": ("2.6.0.post5", "2.7.1.post11", "2.8.0.post5", "2.9.0.post9", "2.13.0"),
    NPUGRAPH_EX: ("2.7.1.post11", "2.8.0.post5", "2.9.0.post9", "2.13.0"),
}
# npugraph_ex's first pass (replace_stream_event_pass) asks for the current stream's id, which
# initialises the device; torchair's copy skips the pass where torch.npu.fake_record_stream is absent.
CURRENT_STREAM = ("torch_npu.npu", "current_stream")


def acl_converter_module(mode: str) -> str:
    """The fx2acl_converter module of an aclgraph mode's package."""
    return ACLGRAPH_PACKAGES[mode] + ACL_CONVERTER_MODULE


PRIVATES = (
    Private(
        f"sys.modules['torchair'].{PROXY_SLOT}",
        "torch_npu's lazy torchair proxy: read its slot to know "
        "whether torchair is loaded without loading it (torchair_package)",
        REAL_TORCH_NPU,
        kind="runtime",
    ),
    Private(
        TORCHAIR_REAL_NAME,
        "the name the proxy imports the real torchair under (watched like 'torchair')",
        REAL_TORCH_NPU,
        kind="runtime",
    ),
    Private(
        DYNAMO_DIR + "/torchair/__init__.py",
        "torchair inside torch_npu: importable as top-level "
        "'torchair' once torch_npu/dynamo is on sys.path (stand-in capture)",
        kind="file",
    ),
    Private(
        NATIVE_CONVERTER_FILE,
        "torchair's converter for the op: its presence says the torch-npu has the op (read without importing)",
        kind="file",
    ),
    Private(COMPANION_SCHEMA_FILE, "schemas of dispatch_v2/combine_v2 (stand-in capture)", kind="file"),
    Private(
        COMPANION_META_FILE,
        "meta functions of dispatch_v2/combine_v2, taken out with ast "
        f"(stand-in capture); they call {', '.join(COMPANION_META_HELPERS)}",
        kind="file",
    ),
    Private(
        f"dlopen({DLOPENED_SONAMES[0]})",
        "opened by torch_npu at import time, not a DT_NEEDED entry: stubbed too for the real torch_npu",
        ("2.6.0.post5",),
        kind="runtime",
    ),
    Private(
        CUSTOM_CONVERTERS,
        "imported before the plugin registers its converter, so that torchair's own registrations come first",
    ),
    Private(
        NATIVE_CONVERTER_MODULE,
        "torchair's own converter module for the op (kept with TORCHAIR_PLUGIN_NATIVE_CONVERTER=1)",
    ),
    *(
        Private(name, "imported again once the companion ops are defined, so their converters register")
        for name in V2_CONVERTER_MODULES
    ),
    *(
        Private(
            name,
            "the v1 chain's converters, imported again once the ops are defined (where they exist)",
            ("2.13.0",),
            required=False,
        )
        for name in V1_CONVERTER_MODULES
    ),
    Private(NATIVE_MODULE, "native torchair module behind ge_custom: CANN-less capture wraps it in a stand-in"),
    Private(":".join(GRAPH_ENGINE_INIT), "GE initialisation (native): a no-op for CANN-less capture"),
    Private(":".join(BACKEND_GRAPH_ENGINE_INIT), "the same, where generated code imports it"),
    Private(":".join(CANN_COMPAT), "native op check against CANN's registry: 'compatible' for CANN-less capture"),
    Private(":".join(CUSTOM_OP_NATIVE), "the native module custom_op asks for an op's IR: a stand-in answers"),
    Private(f"{FX2GE}:{GE_CONCRETE_GRAPH}.__call__", "runs a GE graph (native): refused for CANN-less capture"),
    Private(f"{FX2GE}:{GE_CONCRETE_GRAPH}.{OPTIMIZE_GRAPH}", "where capture takes the lowered GE graph"),
    Private(
        f"{FX2GE}:{GE_CONCRETE_GRAPH}.graph -> GeGraph.{GRAPH_PROTO}",
        "the GE graph's GraphDef protobuf (copied by capture)",
        kind="runtime",
    ),
    Private(
        f"torch.ops.npu.npu_moe_update_expert.default.{CONVERTER_ATTRIBUTE}",
        "torchair's converter registry: read to know whether a native converter is there to keep",
        kind="runtime",
    ),
    Private(":".join(PBTXT), "the converter behind CompilerConfig().debug.graph_dump.type='pbtxt'"),
    Private(
        f"GeTensorDesc.attr['{META_DESC_ATTR}']",
        "the torch shape of a lowered tensor, read by graph_text (GE graph goldens compare it)",
        kind="runtime",
    ),
    *(
        Private(
            f"{acl_converter_module(mode)}:{ACL_GRAPH}",
            f"{mode}: the ACL graph manager torchair hands the final FX graph to; capture stands in for it (no device)",
            ACLGRAPH_CHECKED_ON[mode],
            kind="runtime",
        )
        for mode in ACLGRAPH_PACKAGES
    ),
    *(
        Private(
            f"{acl_converter_module(mode)}:{ACL_CONCRETE_GRAPH}.{ACL_CODEGEN}",
            f"{mode}: the Python source the runner would execute instead (it reaches the device); capture answers None",
            ACLGRAPH_CHECKED_ON[mode],
            kind="runtime",
        )
        for mode in ACLGRAPH_PACKAGES
    ),
    Private(
        ":".join(CURRENT_STREAM),
        "public, but reaches the device: npugraph_ex's stream pass reads its "
        "stream_id at compile time; capture answers a host stand-in",
        ACLGRAPH_CHECKED_ON[NPUGRAPH_EX],
        kind="runtime",
    ),
    Private(
        f"AclGraphCacheInfo.{{{ACL_STATIC_INPUTS}, {ACL_COPIED_INPUTS}, {ACL_MUTATED_INPUTS}, {ACL_OUTPUT_ALIASES}}}",
        "what AclGraph.load learns per input: read by capture to say which inputs are static",
        ACLGRAPH_CHECKED_ON["reduce-overhead"],
        kind="runtime",
    ),
    Private(
        f"AclGraph config['{ACL_FROZEN_OPTION}'], ['{ACL_CAPTURE_LIMIT_OPTION}']",
        "whether a static input's address is in the graph key, and the recapture budget",
        ACLGRAPH_CHECKED_ON["reduce-overhead"],
        kind="runtime",
    ),
)


def resolve(private: Private) -> Any:
    """What a ``python`` entry names: its module's spec, or the attribute (importing the module);
    None, AttributeError or KeyError where it is gone.

    A module alone is found, not imported: importing a torchair converter module registers its
    converter, over the plugin's.
    """
    if not private.attribute:
        return sys.modules.get(private.module) or importlib.util.find_spec(private.module)
    target: Any = importlib.import_module(private.module)
    for part in filter(None, private.attribute.split(".")):
        target = target.__dict__[part] if isinstance(target, type) else getattr(target, part)
    return target


# --- the readers --------------------------------------------------------------------------------------


def torchair_package(modules: Mapping[str, Any] = sys.modules, *, load: bool = False) -> Optional[types.ModuleType]:
    """The real torchair package, or None where it is not imported (completely).

    ``sys.modules["torchair"]`` may be torch_npu's lazy proxy. Without ``load`` its slot is read
    without its ``__getattr__`` (which would import torchair: 2-3 s); with ``load`` an attribute
    is touched first, which makes the proxy import the package.
    """
    if load:
        modules["torchair"].CompilerConfig  # noqa: B018  (touching an attribute makes the lazy proxy load)
    for name in ("torchair", TORCHAIR_REAL_NAME):
        module = modules.get(name)
        if module is not None and not isinstance(module, types.ModuleType):
            module = vars(module).get(PROXY_SLOT)
        if not isinstance(module, types.ModuleType):
            continue
        spec = module.__dict__.get("__spec__")
        if spec is not None and getattr(spec, "_initializing", False):
            continue  # mid-import: whoever watches the import sees it finish
        return module
    return None


def registered_converter(op: Any) -> Any:
    """The GE converter torchair holds for ``op`` (an OpOverload), or None."""
    return getattr(op, CONVERTER_ATTRIBUTE, None)


def graph_def(ge_concrete_graph: Any) -> Any:
    """The GraphDef protobuf of a GeConcreteGraph's graph (the object itself: copy it to keep it)."""
    return getattr(ge_concrete_graph.graph, GRAPH_PROTO)
