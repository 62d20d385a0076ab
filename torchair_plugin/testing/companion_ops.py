"""``npu_moe_distribute_dispatch(_v2)`` and ``npu_moe_distribute_combine(_v2)`` for capture off the NPU.

The chain the op exists for is update_expert -> dispatch_v2 -> combine_v2, or the v1 pair (the
op's own documentation names both dispatches). Capture runs the FX graph eagerly on CPU tensors,
so these ops need a CPU kernel. The v2 pair is required; the v1 pair is added wherever the
installed torch-npu has it. :func:`define_companion_ops`:

- where torch_npu is loaded (the real one, over CANN stubs or not), the ops, their schemas and
  meta functions are torch_npu's own: it only adds a CPU kernel (below) where none exists;
- where it cannot be loaded (the stand-in mode), it defines the two ops in the ``npu``
  namespace, only if they are absent, from the installed torch-npu's files:

- schemas: the ``func:`` lines of ``torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml``;
- shape functions: the meta functions of ``torch_npu/op_plugin/meta/_meta_registrations.py``,
  taken out with :mod:`ast` together with the module-level helpers and constants they use
  (that file cannot be imported without torch_npu), decorators dropped, and run with the small
  stand-ins in :data:`STAND_INS` for the torch_npu helpers they call;
- CPU kernels: zero tensors of the shapes and dtypes those meta functions compute. These ops
  are collectives: there is nothing meaningful to compute on one CPU process; the point is to
  trace and lower them (capture runs the FX graph eagerly, so a kernel must exist).

Nothing is retyped, so the chain graph follows the installed torch-npu version. Where torchair
is already imported, torchair's own converters for the two ops (whose modules failed to import
while the ops were absent) are imported again so they register.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import math
import os
import re
import sys
from typing import Any, Callable, Dict, List

from torchair_plugin import _upstream, environment, registration
from torchair_plugin._process_state import STATE

V2_OPS = ("npu_moe_distribute_dispatch_v2", "npu_moe_distribute_combine_v2")
V1_OPS = ("npu_moe_distribute_dispatch", "npu_moe_distribute_combine")  # where torch-npu has them
OPS = V2_OPS + V1_OPS


class _ErrCode:
    def __getattr__(self, name: str) -> str:
        return name


def _ops_error(code: Any) -> str:
    return f" [torch_npu ERR {code}]"


def _no_soc_version() -> int:
    raise RuntimeError(
        "companion ops stand-in: the SoC version is unknown without an NPU; "
        "call npu_moe_distribute_dispatch_v2 with expert_scales=None on this machine"
    )


# The torch_npu helpers the meta functions call (_upstream.COMPANION_META_HELPERS), and what
# stands in for them here.
STAND_INS: Dict[str, Any] = {
    "ops_error": _ops_error,
    "ErrCode": _ErrCode(),
    "get_soc_version": _no_soc_version,
}


def torch_npu_dir() -> str:
    directory = environment.torch_npu_dir()
    if directory is None:
        raise ModuleNotFoundError("torch-npu is not installed (pip install torch-npu==2.13.0)", name="torch_npu")
    return directory


def read_schemas(yaml_text: str, names=V2_OPS, optional=()) -> Dict[str, str]:
    """``name -> "(args) -> returns"`` from the codegen yaml's ``- func:`` lines; every one of
    ``names`` must be there, each of ``optional`` is taken where it is."""
    found = {}
    for match in re.finditer(r"^- func:\s*(\w+)(\(.*\)\s*->\s*.+?)\s*$", yaml_text, re.MULTILINE):
        if match.group(1) in names or match.group(1) in optional:
            found[match.group(1)] = match.group(2)
    missing = [n for n in names if n not in found]
    if missing:
        raise LookupError(f"no schema for {missing} in the installed torch-npu's yaml")
    return found


def _free_names(node: ast.stmt) -> set:
    """Names ``node`` reads and does not bind (decorators excluded: they are dropped)."""
    parts: List[Any] = [node]
    if isinstance(node, ast.FunctionDef):
        parts = node.body + node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
    loaded = {n.id for p in parts for n in ast.walk(p) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    bound = {n.id for p in parts for n in ast.walk(p) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    if isinstance(node, ast.FunctionDef):
        args = node.args
        bound |= {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        bound |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    return loaded - bound


def extract_functions(source: str, function_names: Dict[str, str], given: Dict[str, Any]) -> Dict[str, Callable]:
    """Exec the named top-level functions of ``source`` and what they need from it.

    ``function_names`` maps op name -> meta function name. Module-level functions and
    assignments they reference are taken along (transitively); decorators are dropped. A name
    defined neither there, nor in ``given``, nor in builtins is an error naming it.
    """
    tree = ast.parse(source)
    defs: Dict[str, ast.stmt] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef):
            defs[stmt.name] = stmt
        elif isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            for target in stmt.targets:
                assert isinstance(target, ast.Name)
                defs[target.id] = stmt
    wanted: List[str] = []
    pending = list(function_names.values())
    while pending:
        name = pending.pop()
        if name in wanted:
            continue
        if name not in defs:
            if name in given or hasattr(builtins, name):
                continue
            raise LookupError(
                f"{name!r} is used by the meta functions but neither defined in the meta file nor stood in for"
            )
        wanted.append(name)
        pending.extend(_free_names(defs[name]))
    body = []
    for stmt in tree.body:  # source order, each statement once
        if any(defs.get(n) is stmt for n in wanted) and stmt not in body:
            if isinstance(stmt, ast.FunctionDef):
                stmt.decorator_list = []
            body.append(stmt)
    namespace = dict(given)
    exec(compile(ast.Module(body=body, type_ignores=[]), "<torch_npu meta: companion ops>", "exec"), namespace)
    return {op: namespace[fn] for op, fn in function_names.items()}


def _zeros_like_meta(meta_fn: Callable) -> Callable:
    import torch
    from torch.utils._pytree import tree_map

    def to_meta(value):
        return value.to("meta") if isinstance(value, torch.Tensor) else value

    def cpu_kernel(*args, **kwargs):
        out = meta_fn(*tree_map(to_meta, args), **tree_map(to_meta, kwargs))
        return tree_map(lambda t: torch.zeros(t.shape, dtype=t.dtype), out)

    return cpu_kernel


def _native_meta_as_cpu_kernel(name: str) -> Callable:
    import torch

    return _zeros_like_meta(getattr(torch.ops.npu, name).default)


def define_companion_ops() -> List[str]:
    """Make :data:`OPS` runnable on CPU (idempotent); return the names defined by this call."""
    import torch

    with STATE.lock:
        absent = [name for name in OPS if not registration.op_exists(f"npu::{name}")]
        without_cpu = [
            name for name in OPS if name not in absent and not registration.has_kernel(f"npu::{name}", "CPU")
        ]
        if "torch_npu" in sys.modules:  # torch_npu defined every op it has: the absent ones it lacks
            absent = []
        if without_cpu:
            library = registration.new_library("npu")
            for name in without_cpu:
                library.impl(name, _native_meta_as_cpu_kernel(name), "CPU")
        if not absent:
            return []
        root = torch_npu_dir()
        with open(os.path.join(root, _upstream.COMPANION_SCHEMA_FILE), encoding="utf-8") as f:
            schemas = read_schemas(f.read(), [n for n in absent if n in V2_OPS], [n for n in absent if n in V1_OPS])
        with open(os.path.join(root, _upstream.COMPANION_META_FILE), encoding="utf-8") as f:
            meta_source = f.read()
        absent = [name for name in absent if name in schemas and f"def {name}_meta(" in meta_source]
        metas = extract_functions(
            meta_source, {name: f"{name}_meta" for name in absent}, {"torch": torch, "math": math, **STAND_INS}
        )
        library = registration.new_library("npu")
        for name in absent:
            library.define(name + schemas[name])
            torch.library.register_fake(f"npu::{name}", metas[name], lib=library)
            library.impl(name, _zeros_like_meta(metas[name]), "CPU")
    if _upstream.CUSTOM_CONVERTERS in sys.modules:
        for module in _upstream.COMPANION_CONVERTER_MODULES:
            if module not in sys.modules and importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
    return absent
