"""torchair_plugin._upstream: every private torch_npu/torchair name resolves here, and none is used elsewhere.

Run against a new torch-npu first: a failure names the entry that moved.
"""

import ast
import os
import pathlib
import sys

import pytest
import torch

import torchair_plugin
from torchair_plugin import _upstream, environment
from torchair_plugin.testing import Mode, current_mode
from torchair_plugin.testing.pytest_plugin import require_ge_capture

PACKAGE = pathlib.Path(torchair_plugin.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted((PACKAGE.parent / "converters").glob("*.py"))


def _entries(kind):
    return [p for p in _upstream.PRIVATES if p.kind == kind]


@pytest.mark.parametrize("private", _entries("python"), ids=lambda p: p.name)
def test_every_python_name_resolves_in_the_installed_torch_npu(private):
    require_ge_capture()
    if not private.required and environment.torch_npu_version() not in private.checked_on:
        pytest.skip(f"optional, and not checked on torch-npu {environment.torch_npu_version()}")
    assert _upstream.resolve(private) is not None


@pytest.mark.parametrize("private", _entries("file"), ids=lambda p: p.name)
def test_every_file_is_in_the_installed_torch_npu(private):
    directory = environment.torch_npu_dir()
    if directory is None:
        pytest.skip("torch-npu is not installed")
    assert os.path.isfile(os.path.join(directory, private.name)), private.why


def test_the_companion_meta_file_still_calls_the_helpers_stood_in_for():
    directory = environment.torch_npu_dir()
    if directory is None:
        pytest.skip("torch-npu is not installed")
    source = pathlib.Path(directory, _upstream.COMPANION_META_FILE).read_text(encoding="utf-8")
    # Each stood-in helper is one some torch-npu calls (torch-npu 2.6 has no get_soc_version call)...
    assert {"ops_error", "ErrCode"} <= {h for h in _upstream.COMPANION_META_HELPERS if h in source}
    # ...and the meta functions need nothing else from torch_npu: taking them out succeeds.
    import math

    import torch

    from torchair_plugin.testing import companion_ops

    wanted = {name: f"{name}_meta" for name in companion_ops.OPS if f"def {name}_meta(" in source}
    assert set(companion_ops.V2_OPS) <= set(wanted)
    functions = companion_ops.extract_functions(
        source, wanted, {"torch": torch, "math": math, **companion_ops.STAND_INS}
    )
    assert set(functions) == set(wanted)


def test_the_converter_registry_is_the_op_attribute():
    require_ge_capture()
    assert _upstream.registered_converter(torch.ops.npu.npu_moe_update_expert.default) is not None


def test_the_lowered_graph_is_read_from_the_graph_proto_with_shapes_in_meta():
    require_ge_capture()
    from torchair_plugin.testing import lower_fx

    graph = lower_fx(
        lambda ids, table: torch.ops.npu.npu_moe_update_expert(ids, table, balance_mode=1),
        torch.zeros(2, 2, dtype=torch.int32),
        torch.ones(4, 3, dtype=torch.int32),
    )
    assert type(graph.graph_def).__name__ == "GraphDef"
    update = next(op for op in graph.graph_def.op if op.type == "MoeUpdateExpert")
    assert all(_upstream.META_DESC_ATTR in desc.attr for desc in update.output_desc)


@pytest.mark.skipif(current_mode() is not Mode.REAL_TORCH_NPU, reason="torch_npu's proxy exists only where it loads")
def test_the_lazy_proxy_keeps_the_package_in_its_slot():
    require_ge_capture()
    proxy = sys.modules["torchair"]
    assert not isinstance(proxy, type(sys)), "torch_npu no longer installs a lazy torchair proxy"
    assert isinstance(vars(proxy).get(_upstream.PROXY_SLOT), type(sys))
    assert _upstream.torchair_package() is vars(proxy)[_upstream.PROXY_SLOT]
    assert _upstream.TORCHAIR_REAL_NAME in sys.modules


def test_every_entry_has_versions_from_the_matrix():
    for private in _upstream.PRIVATES:
        assert private.checked_on and set(private.checked_on) <= set(_upstream.MATRIX), private.name


# --- nothing else names a private torch_npu/torchair symbol -----------------------------------------

_PRIVATE_ATTRIBUTES = {
    _upstream.CONVERTER_ATTRIBUTE,
    _upstream.GRAPH_PROTO,
    _upstream.OPTIMIZE_GRAPH,
    _upstream.PROXY_SLOT,
    _upstream.GE_CONCRETE_GRAPH,
    _upstream.GRAPH_ENGINE_INIT[1],
    _upstream.CANN_COMPAT[1],
    _upstream.PBTXT[1],
    _upstream.META_DESC_ATTR,
    _upstream.ACL_GRAPH,
    _upstream.ACL_CONCRETE_GRAPH,
    _upstream.ACL_STATIC_INPUTS,
    _upstream.ACL_COPIED_INPUTS,
    _upstream.ACL_MUTATED_INPUTS,
    _upstream.ACL_OUTPUT_ALIASES,
    _upstream.ACL_FROZEN_OPTION,
}


def _private_uses(path: pathlib.Path):
    """(line, text) of each attribute access, import or string constant (skipped aside) that
    names a private torch_npu/torchair symbol."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    # pieces of f-strings (f"{name}_meta" names a function, not the desc attribute)
    skipped |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _PRIVATE_ATTRIBUTES:
            yield node.lineno, "." + node.attr
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                if name.startswith(("torchair._", "torchair.core", "torch_npu.", "npugraph_ex.")):
                    yield node.lineno, "import " + name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped:
            if (
                node.value.startswith(("torchair._", "torchair.core", "torch_npu.", "npugraph_ex."))
                or node.value in _PRIVATE_ATTRIBUTES
            ):
                yield node.lineno, repr(node.value)


def test_no_module_but_the_seam_names_a_private_symbol():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text}"
        for path in SOURCES
        if path.name != "_upstream.py"
        for line, text in _private_uses(path)
    ]
    assert not found, "name these in torchair_plugin/_upstream.py instead:\n" + "\n".join(found)


def test_the_seam_check_sees_a_private_use(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""torchair._ge_concrete_graph in a docstring is fine."""\n'
        "import torchair._ge_concrete_graph.utils\n"
        "x = op._ge_converter\n"
        "y = 'torch_npu.dynamo.torchair'\n",
        encoding="utf-8",
    )
    assert [text for _, text in _private_uses(sample)] == [
        "import torchair._ge_concrete_graph.utils",
        "._ge_converter",
        "'torch_npu.dynamo.torchair'",
    ]
