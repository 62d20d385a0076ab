"""No import order kills the process: the plugin and the real torch_npu (over CANN stubs).

Each scenario runs in a fresh interpreter (``tests/scenarios/import_orders.py``); they run
concurrently, once per session. The former failure was a C++ ``terminate`` (exit by SIGABRT, no
traceback) when torch_npu was imported after the plugin had defined the op's schema.
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from torchair_plugin import _converter_hook as hook
from torchair_plugin.testing import Mode, current_mode

pytestmark = pytest.mark.skipif(
    current_mode() is not Mode.REAL_TORCH_NPU, reason="needs the real torch_npu loadable over CANN stubs"
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "scenarios", "import_orders.py")
PLUGIN_CONVERTER_MODULE = hook.CONVERTER_MODULE
NATIVE_CONVERTER_MODULE = "torchair._ge_concrete_graph.ge_converter.custom.npu_moe_update_expert"

# environment overrides per scenario (None removes the variable)
SCENARIOS = {
    "plugin_then_torch_npu": {},
    "torch_npu_then_plugin": {},
    "torchair_then_plugin": {},
    "failed_torch_npu_then_retry": {},
    "plugin_first_capture_opt_out": {hook.NATIVE_CONVERTER_ENV: "1"},
    "autoloaded_by_import_torch": {"TORCH_DEVICE_BACKEND_AUTOLOAD": "1"},
}


def _environment(stubs, overrides):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["TPL_STUBS"] = os.pathsep.join(str(p) for p in stubs.libraries())
    env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
    env.pop(hook.NATIVE_CONVERTER_ENV, None)
    env.update(overrides)
    if overrides.get("TORCH_DEVICE_BACKEND_AUTOLOAD") == "1":
        # As on a box where CANN's libraries are found by the loader: torch's autoload imports
        # torch_npu inside ``import torch``, before any Python code of ours can preload stubs.
        env["LD_PRELOAD"] = str(stubs.all_symbols)
        env["LD_LIBRARY_PATH"] = str(stubs.directory)
    return env


def _run(name, stubs):
    scenario = name.replace("_opt_out", "")
    proc = subprocess.run(
        [sys.executable, SCRIPT, scenario],
        cwd=REPO,
        env=_environment(stubs, SCENARIOS[name]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc


@pytest.fixture(scope="module")
def outcomes():
    from torchair_plugin.testing import stub_libraries

    stubs = stub_libraries()
    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = dict(zip(SCENARIOS, pool.map(lambda n: _run(n, stubs), SCENARIOS)))
    return procs


def _result(outcomes, name):
    proc = outcomes[name]
    assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


NATIVE_WITH_PLUGIN_FAKE = {
    "schema": "native",
    "fake": "torchair_plugin (validating fake kernel)",
}


def _assert_native_op_with_plugin_pieces(report):
    assert {k: report[k] for k in NATIVE_WITH_PLUGIN_FAKE} == NATIVE_WITH_PLUGIN_FAKE
    assert report["kernels"]["PrivateUse1"] == "native"
    # torch_npu has no CPU kernel for the op: the reference serves CPU
    assert report["kernels"]["CPU"] == "torchair_plugin (reference kernel)"


def _assert_op_works(result):
    assert result["op"] == [[2, 1], [2, 3]]
    assert "world_size" in result["fake"] and "[2, 768]" in result["fake"]


def test_plugin_first_then_torch_npu_keeps_the_process_alive(outcomes):
    result = _result(outcomes, "plugin_then_torch_npu")
    assert result["before"]["schema"] == "torchair_plugin"
    # handles saved before torch_npu re-defined the op (packet and overload) still run it
    assert result["saved_handles"] == [[[2, 1], [2, 3]]] * 2
    _assert_native_op_with_plugin_pieces(result["after"])
    assert result["after"]["converter"] == hook.PENDING.words()
    assert result["after_torchair"]["converter"] == hook.PLUGIN.words()
    _assert_op_works(result)
    # and capture in that process runs on the real torch_npu, with the plugin's converter
    assert result["mode"] == "REAL_TORCH_NPU"
    assert result["module"] == PLUGIN_CONVERTER_MODULE


def test_torch_npu_first_then_plugin(outcomes):
    result = _result(outcomes, "torch_npu_then_plugin")
    _assert_native_op_with_plugin_pieces(result["after"])
    assert result["after"]["converter"] == hook.PENDING.words()
    assert result["after_torchair"]["converter"] == hook.PLUGIN.words()
    _assert_op_works(result)


def test_torchair_loaded_through_the_real_proxy_before_the_plugin(outcomes):
    result = _result(outcomes, "torchair_then_plugin")
    _assert_native_op_with_plugin_pieces(result["after"])
    assert result["after"]["converter"] == hook.PLUGIN.words()
    _assert_op_works(result)


def test_torch_npu_autoloaded_by_import_torch(outcomes):
    result = _result(outcomes, "autoloaded_by_import_torch")
    assert result["autoloaded"] is True
    _assert_native_op_with_plugin_pieces(result["after"])
    _assert_op_works(result)


def test_a_failed_torch_npu_import_leaves_the_plugin_op_and_a_retry_works(outcomes):
    result = _result(outcomes, "failed_torch_npu_then_retry")
    assert result["first"] in ("ImportError", "OSError")
    assert result["after_failure"]["schema"] == "torchair_plugin"
    assert result["op_after_failure"] == [[2, 1], [2, 3]]
    assert result["saved_after_failure"] == result["saved_handles"] == [[[2, 1], [2, 3]]] * 2
    _assert_native_op_with_plugin_pieces(result["after_retry"])
    _assert_op_works(result)


def test_opt_out_keeps_torch_npus_own_converter(outcomes):
    result = _result(outcomes, "plugin_first_capture_opt_out")
    assert result["module"] == NATIVE_CONVERTER_MODULE
    assert result["after"]["converter"] == hook.NATIVE_KEPT.words()
