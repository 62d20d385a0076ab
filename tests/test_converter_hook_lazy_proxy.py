"""The converter hook against torch_npu's REAL lazy ``torchair`` proxy, in both import orders.

On an Ascend machine ``import torch_npu`` puts a ``_LazyTorchair`` object (not a module) at
``sys.modules["torchair"]``; the first touch of its ``__spec__``/``__path__`` imports the real
package as ``torch_npu.dynamo.torchair``, and torchair's own absolute ``torchair.xxx`` imports
then resolve through the proxy. ``tests/test_converter_hook.py`` only covers a hand-written
stand-in for that object; here the proxy code is the installed one.

``import torch_npu`` needs CANN, so each subprocess builds just enough of it:

- the CANN stub libraries, from ``torchair_plugin.testing._torchair_import.preload_stubs``;
- a stand-in ``torch_npu`` package with no submodules (torchair's ``import torch_npu`` and
  ``'torch_npu' in sys.modules`` checks then see what they see on an Ascend machine, and every
  ``torch_npu.xxx`` import fails with ImportError, which torchair handles), plus the one
  function torchair's lowering calls on it (``torch_npu.npu._get_deterministic_level``);
- a stand-in ``torch_npu.dynamo`` whose ``__path__`` is the installed ``torch_npu/dynamo``
  directory, into which the proxy's classes and functions are compiled straight from the
  installed ``torch_npu/dynamo/__init__.py`` (parsed with ``ast`` at test time, never copied),
  so the proxy's ``from . import torchair`` imports the real package as
  ``torch_npu.dynamo.torchair``;
- ``_install_lazy_torchair()`` (the installed function) to put the proxy in ``sys.modules``.

Then the plugin is imported before or after the proxy is touched, and a tiny function is
compiled with ``torchair.get_npu_backend`` (via ``capture_ge_graphs``) through the proxy.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from torchair_plugin import _converter_hook as hook
from torchair_plugin import _environment
from torchair_plugin.testing import _stubs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [
    pytest.mark.skipif(not _environment.torch_npu_installed(), reason="needs torch-npu (pip install torch-npu==2.13.0)"),
    pytest.mark.skipif(_environment.cann_home() is not None, reason="torch_npu stand-ins: only where CANN is absent"),
    pytest.mark.skipif(_environment.c_compiler() is None, reason="needs a C compiler for the CANN stub libraries"),
    pytest.mark.skipif(importlib.util.find_spec("google.protobuf") is None, reason="torchair needs protobuf"),
]

# What is taken from the installed torch_npu/dynamo/__init__.py: the proxy, the helpers it calls,
# and the two classes on its failure path (so an import error shows as itself, not NameError).
_PROXY_NAMES = (
    "_ImportError",
    "_LazyException",
    "_LazyBackend",
    "_LazyTorchair",
    "_bind_lazy_submodules",
    "_install_lazy_torchair",
)

_SETUP = """
import ast, importlib.util, json, os, sys, time, types

import torch

# torchair_plugin.testing without torchair_plugin/__init__ (that would install the converter
# hook now): a bare package object stands in while the helpers load, and is dropped again.
bare = types.ModuleType("torchair_plugin")
bare.__path__ = [os.path.join(os.getcwd(), "torchair_plugin")]
sys.modules["torchair_plugin"] = bare
from torchair_plugin.testing import _interception, _torchair_import
from torchair_plugin.testing._torchair_import import CannLessUnavailable, Mode
del sys.modules["torchair_plugin"]

try:
    _stub_handles = _torchair_import.preload_stubs()
    dynamo_dir = os.path.join(_torchair_import._torch_npu_dir(), "dynamo")
except CannLessUnavailable as exc:
    print(json.dumps({"skip": str(exc)}))
    sys.exit(0)
source_path = os.path.join(dynamo_dir, "__init__.py")

# Stand-in torch_npu: its real spec (find_spec keeps answering where it is installed), no
# submodules (they need CANN): `import torch_npu.xxx` raises ImportError, as torchair expects.
torch_npu = types.ModuleType("torch_npu")
torch_npu.__spec__ = importlib.util.find_spec("torch_npu")
torch_npu.__path__ = []
dynamo = types.ModuleType("torch_npu.dynamo")
dynamo.__spec__ = importlib.util.spec_from_file_location(
    "torch_npu.dynamo", source_path, submodule_search_locations=[dynamo_dir])
dynamo.__path__ = [dynamo_dir]
dynamo.__file__ = source_path
dynamo.__package__ = "torch_npu.dynamo"
torch_npu.dynamo = dynamo
sys.modules["torch_npu"] = torch_npu
sys.modules["torch_npu.dynamo"] = dynamo
# The one torch_npu function torchair's GE lowering calls once it sees torch_npu imported
# (the deterministic level, for a compile option and a Dynamo guard); 0 is torch_npu's default.
torch_npu.npu = types.SimpleNamespace(_get_deterministic_level=lambda: 0)

# What the installed module imports, reduced to the calls the proxy makes.
class ErrCode:
    INTERNAL = "ERR00005"
    NOT_FOUND = "ERR00004"
vars(dynamo).update(os=os, sys=sys, time=time, ErrCode=ErrCode,
                    pta_error=lambda code: f"\\n[ERROR] {code} (stand-in pta_error)",
                    _should_print_warning=lambda: False)

# The installed proxy code, parsed and compiled into the stand-in package (not copied).
with open(source_path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), source_path)
wanted = set(PROXY_NAMES)
body = [node for node in tree.body
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in wanted]
missing = wanted - {node.name for node in body}
assert not missing, f"{source_path} no longer defines {sorted(missing)}"
exec(compile(ast.Module(body=body, type_ignores=[]), source_path, "exec"), vars(dynamo))

assert "torchair" not in sys.modules
assert dynamo._install_lazy_torchair() is True  # what torch_npu's backend registration runs
proxy = sys.modules["torchair"]
assert type(proxy).__name__ == "_LazyTorchair" and vars(proxy)["_torchair"] is None


def touch_proxy():
    import torchair  # reads proxy.__spec__: the proxy imports torch_npu.dynamo.torchair
    assert torchair is proxy and sys.modules["torchair"] is proxy
    real = sys.modules["torch_npu.dynamo.torchair"]
    assert vars(proxy)["_torchair"] is real
    return real


def import_plugin():
    import torchair_plugin
    return torchair_plugin, torchair_plugin.registration_report()["converter"]
"""

_CHECK = """
# CANN-less lowering: the same interception import_torchair applies, then capture_ge_graphs
# is pointed at the proxy (its import_torchair would refuse: torch_npu is in sys.modules).
_interception.apply(proxy)
_torchair_import._torchair, _torchair_import._mode = proxy, Mode.CANN_LESS

from torchair_plugin._converter_hook import converter_module
from torchair_plugin.testing import capture_ge_graphs

conv = converter_module()
ours = conv.convert_npu_moe_update_expert
op = torch.ops.npu.npu_moe_update_expert.default

def current_is_ours():
    current = getattr(op, "_ge_converter", None)
    return current is ours or getattr(current, "__wrapped__", None) is ours

registered = current_is_ours()

# Count calls into our converter's body (the native one never calls this module's custom_op).
calls = []
real_custom_op = conv.custom_op
def counting_custom_op(*args, **kwargs):
    calls.append(args[0])
    return real_custom_op(*args, **kwargs)
conv.custom_op = counting_custom_op

ids, table = torch.zeros(2, 2, dtype=torch.int32), torch.ones(4, 3, dtype=torch.int32)
# torchair's fusion patterns trace torch_npu's own ops once torch_npu is in sys.modules; the
# stand-in registers none of them, so that pass (a real torchair option) is off here.
config = proxy.CompilerConfig()
config.experimental_config.pattern_fusion_pass = False
result = capture_ge_graphs(lambda i, t: torch.ops.npu.npu_moe_update_expert(i, t, balance_mode=1), ids, table,
                           config=config)

print(json.dumps({
    "before": before,
    "after": plugin.registration_report()["converter"],
    "registered": registered,
    "still_ours_after_compile": current_is_ours(),
    "converter_calls": calls,
    "op_types": result.graph.op_types(),
    "proxy_type": type(sys.modules["torchair"]).__name__,
    "watchers": sum(getattr(f, "_torchair_plugin_watcher", False) for f in sys.meta_path),
}))
"""


def _run(order: str) -> dict:
    code = f"PROXY_NAMES = {_PROXY_NAMES!r}\n" + textwrap.dedent(_SETUP) + textwrap.dedent(order) + textwrap.dedent(_CHECK)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env[_environment.AUTOLOAD_VAR] = "0"  # a real torch_npu must not load (it needs CANN)
    env.pop(hook.NATIVE_CONVERTER_ENV, None)
    argv = [sys.executable, "-c", code]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    assert "could not register" not in proc.stderr, proc.stderr[-4000:]
    return out


def _assert_plugin_converter_used(out: dict) -> None:
    assert out["after"] == hook.STATUS_PLUGIN
    assert out["registered"] is True
    assert out["still_ours_after_compile"] is True  # torchair's lazy custom-converter import kept it
    assert out["converter_calls"] == ["MoeUpdateExpert"]  # lowering went through our converter
    assert out["op_types"] == ["Data", "Data", "MoeUpdateExpert", "NetOutput"]
    assert out["proxy_type"] == "_LazyTorchair"  # nothing replaced the proxy
    assert out["watchers"] == 0


def test_plugin_imported_before_the_proxy_loads_torchair():
    out = _run(
        """
        plugin, before = import_plugin()
        assert vars(proxy)["_torchair"] is None, "importing the plugin must not import torchair"
        assert "torch_npu.dynamo.torchair" not in sys.modules
        touch_proxy()
        """
    )
    assert out["before"] == hook.STATUS_PENDING
    _assert_plugin_converter_used(out)


def test_plugin_imported_after_torchair_loaded_through_the_proxy():
    out = _run(
        """
        touch_proxy()
        plugin, before = import_plugin()
        """
    )
    assert out["before"] == hook.STATUS_PLUGIN
    _assert_plugin_converter_used(out)


def test_proxy_names_exist_in_the_installed_torch_npu():
    """The ast extraction above fails loudly (not silently skips) if torch_npu renames them."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("torch_npu")
    path = os.path.join(list(spec.submodule_search_locations)[0], "dynamo", "__init__.py")
    with open(path, encoding="utf-8") as f:
        names = {n.name for n in ast.parse(f.read()).body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    assert set(_PROXY_NAMES) <= names
