"""torchair_plugin._converter_hook: the decision table, and the real hook in fresh processes."""

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

from torchair_plugin import _converter_hook as hook
from torchair_plugin.testing import current_mode, Mode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("native_present", [False, True])
@pytest.mark.parametrize("keep_native", [False, True])
def test_torchair_imported_registers_unless_keeping_an_existing_native(native_present, keep_native):
    action = hook.plan_converter(
        torchair_imported=True, torchair_importable=True, native_present=native_present, keep_native=keep_native
    )
    expected = hook.Action.KEEP_NATIVE if (native_present and keep_native) else hook.Action.REGISTER
    assert action is expected


@pytest.mark.parametrize("keep_native", [False, True])
@pytest.mark.parametrize("native_present", [False, True])
def test_not_imported_defers_if_installed_else_nothing(keep_native, native_present):
    kwargs = dict(torchair_imported=False, native_present=native_present, keep_native=keep_native)
    assert hook.plan_converter(torchair_importable=True, **kwargs) is hook.Action.DEFER
    assert hook.plan_converter(torchair_importable=False, **kwargs) is hook.Action.NOTHING


@pytest.mark.parametrize("value,keep", [("", False), ("0", False), ("1", True), ("yes", True)])
def test_opt_out_variable(value, keep):
    assert hook.keep_native_requested({hook.NATIVE_CONVERTER_ENV: value}) is keep


def test_loaded_torchair_sees_modules_and_resolved_proxies_only():
    real = types.ModuleType("torchair")

    class LazyProxy:  # shaped like torch_npu's _LazyTorchair: the package in ._torchair once loaded
        def __init__(self, package):
            self._torchair = package

        def __getattr__(self, name):
            raise AssertionError("the proxy must not be asked for attributes (it would import torchair)")

    assert hook.loaded_torchair({}) is None
    assert hook.loaded_torchair({"torchair": real}) is real
    assert hook.loaded_torchair({"torchair": LazyProxy(None)}) is None
    assert hook.loaded_torchair({"torchair": LazyProxy(real)}) is real
    assert hook.loaded_torchair({"torchair": LazyProxy(None), "torch_npu.dynamo.torchair": real}) is real


def _run(*parts: str, env_extra=None) -> dict:
    """Run the code ``parts`` in a fresh interpreter at the repo root; it prints one JSON line last."""
    code = "".join(textwrap.dedent(part) for part in parts)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(hook.NATIVE_CONVERTER_ENV, None)
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"stdout": proc.stdout, "stderr": proc.stderr, **json.loads(proc.stdout.strip().splitlines()[-1])}


def test_plain_import_is_silent_and_does_not_import_torchair():
    out = _run(
        """
        import json, sys
        import torchair_plugin
        print(json.dumps({"torchair": "torchair" in sys.modules,
                          "converter": torchair_plugin.registration_report()["converter"]}))
        """
    )
    assert out["stdout"].count("\n") == 1 and out["stderr"] == ""
    assert out["torchair"] is False
    expected = hook.STATUS_PENDING if hook.torchair_importable() else hook.STATUS_UNAVAILABLE
    assert out["converter"] == expected


def test_without_torchair_nothing_is_installed():
    out = _run(
        """
        import json, sys
        import torchair_plugin
        from torchair_plugin import _converter_hook as hook
        hook._status = None                       # as if torchair_plugin were imported first now,
        hook._remove_finders()
        hook.torchair_importable = lambda: False  # on a machine without torch-npu
        status = hook.install()
        print(json.dumps({"status": status,
                          "finders": sum(getattr(f, "_torchair_plugin_watcher", False) for f in sys.meta_path)}))
        """
    )
    assert out == {**out, "status": hook.STATUS_UNAVAILABLE, "finders": 0}


capture_only = pytest.mark.skipif(current_mode() is not Mode.CANN_LESS, reason="needs torch-npu installed without CANN")

# Compiling once after registration: torchair's lazy import of its own converters (first
# converter lookup of a compile) must not replace ours.
_COMPILE_AND_REPORT = """
import json, torch
import torchair_plugin
from torchair_plugin.testing import capture_ge_graphs
op = torch.ops.npu.npu_moe_update_expert.default
ids, table = torch.zeros(2, 2, dtype=torch.int32), torch.ones(4, 3, dtype=torch.int32)
capture_ge_graphs(lambda i, t: torch.ops.npu.npu_moe_update_expert(i, t, balance_mode=1), ids, table)
print(json.dumps({"before": before, "after": torchair_plugin.registration_report()["converter"],
                  "module": op._ge_converter.__wrapped__.__module__}))
"""


@capture_only
def test_plugin_first_registers_when_torchair_is_imported():
    out = _run(
        """
        import torchair_plugin
        before = torchair_plugin.registration_report()["converter"]
        from torchair_plugin.testing import import_torchair
        import_torchair()
        """,
        _COMPILE_AND_REPORT
    )
    assert out["before"] == hook.STATUS_PENDING
    assert out["after"] == hook.STATUS_PLUGIN
    assert out["module"] == hook.CONVERTER_MODULE
    assert "Failed to import" not in out["stderr"]


@capture_only
def test_torchair_first_registers_at_plugin_import():
    out = _run(
        """
        import os, sys, types
        # Import torchair (CANN-less) without running torchair_plugin/__init__: a bare package
        # object stands in for it while torchair_plugin.testing loads.
        bare = types.ModuleType("torchair_plugin")
        bare.__path__ = [os.path.join(os.getcwd(), "torchair_plugin")]
        sys.modules["torchair_plugin"] = bare
        from torchair_plugin.testing import import_torchair
        import_torchair()
        assert "torch_npu" not in sys.modules or sys.modules["torch_npu"] is None
        del sys.modules["torchair_plugin"]
        import torchair_plugin
        from torchair_plugin import _converter_hook
        before = torchair_plugin.registration_report()["converter"]
        assert not any(getattr(f, "_torchair_plugin_watcher", False) for f in sys.meta_path)
        """,
        _COMPILE_AND_REPORT
    )
    assert out["before"] == hook.STATUS_PLUGIN
    assert out["after"] == hook.STATUS_PLUGIN
    assert out["module"] == hook.CONVERTER_MODULE


@capture_only
def test_opt_out_keeps_the_native_converter():
    out = _run(
        """
        import torchair_plugin
        before = torchair_plugin.registration_report()["converter"]
        """,
        _COMPILE_AND_REPORT,
        env_extra={hook.NATIVE_CONVERTER_ENV: "1"},
    )
    assert out["before"] == hook.STATUS_PENDING
    assert out["after"] == hook.STATUS_NATIVE
    assert out["module"] == "torchair._ge_concrete_graph.ge_converter.custom.npu_moe_update_expert"


def test_converter_module_resolves_from_the_source_tree_or_the_install():
    pytest.importorskip("google.protobuf")
    if current_mode() is not Mode.CANN_LESS:
        pytest.skip("needs torch-npu installed without CANN")
    from torchair_plugin.testing import import_torchair

    import_torchair()
    module = hook.converter_module()
    assert module.__name__ == hook.CONVERTER_MODULE
    assert os.path.dirname(module.__file__) == os.path.join(REPO, "converters")
    assert hook.converter_module() is module
