"""torchair_plugin._converter_hook: the decision table, and the real hook in fresh processes."""

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

from torchair_plugin import _converter_hook as hook
from torchair_plugin import _upstream
from torchair_plugin.testing import current_mode

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


def test_torchair_package_sees_modules_and_resolved_proxies_only():
    real = types.ModuleType("torchair")

    class LazyProxy:  # shaped like torch_npu's _LazyTorchair: the package in ._torchair once loaded
        def __init__(self, package):
            self._torchair = package

        def __getattr__(self, name):
            raise AssertionError("the proxy must not be asked for attributes (it would import torchair)")

    assert _upstream.torchair_package({}) is None
    assert _upstream.torchair_package({"torchair": real}) is real
    assert _upstream.torchair_package({"torchair": LazyProxy(None)}) is None
    assert _upstream.torchair_package({"torchair": LazyProxy(real)}) is real
    assert _upstream.torchair_package({"torchair": LazyProxy(None), "torch_npu.dynamo.torchair": real}) is real


def _run(*parts: str, env_extra=None) -> dict:
    """Run the code ``parts`` in a fresh interpreter at the repo root; it prints one JSON line last."""
    code = "".join(textwrap.dedent(part) for part in parts)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(hook.NATIVE_CONVERTER_ENV, None)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
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
    expected = (hook.PENDING if hook.torchair_importable() else hook.UNAVAILABLE).words()
    assert out["converter"] == expected


def test_without_torchair_nothing_is_installed():
    out = _run(
        """
        import json, sys
        import torchair_plugin
        from torchair_plugin import _converter_hook as hook, _import_watch
        from torchair_plugin._process_state import STATE
        STATE.converter = None  # as if torchair_plugin were imported first now,
        hook._remove_finders()
        hook.torchair_importable = lambda: False  # on a machine without torch-npu
        status = hook.install()
        print(json.dumps({"status": status.status.name,
                          "finders": _import_watch.is_watching(hook._WATCH_TAG)}))
        """
    )
    assert out == {**out, "status": "UNAVAILABLE", "finders": False}


# The real hook in every import order, against the real torch_npu's lazy torchair proxy:
# tests/test_import_orders.py.


def test_converter_module_resolves_from_the_source_tree_or_the_install():
    pytest.importorskip("google.protobuf")
    if not current_mode().cann_less:
        pytest.skip("needs torch-npu installed without CANN")
    from torchair_plugin.testing import import_torchair

    import_torchair()
    module = hook.converter_module()
    assert module.__name__ == hook.CONVERTER_MODULE
    assert os.path.dirname(module.__file__) == os.path.join(REPO, "converters")
    assert hook.converter_module() is module
