"""torchair_plugin.testing._torchair_import / _interception: when and how torchair is imported."""

import importlib
import json
import os
import subprocess
import sys
import threading

import pytest

from torchair_plugin import environment
from torchair_plugin.testing import Mode, _interception, decide_mode, import_torchair
from torchair_plugin.testing.pytest_plugin import require_ge_capture


def test_cann_present_means_native_import_and_no_stubs(tmp_path):
    fake_cann = tmp_path / "ascend-toolkit"
    fake_cann.mkdir()
    cann_dir = environment.cann_home({"ASCEND_HOME_PATH": str(fake_cann)})
    assert cann_dir == str(fake_cann)
    assert decide_mode(cann_dir, npu_installed=True) is Mode.NATIVE
    assert decide_mode(cann_dir, npu_installed=False) is Mode.NATIVE


def test_without_cann_the_real_torch_npu_is_preferred_where_it_loads():
    assert decide_mode(None, npu_installed=True, real_loads=lambda: True) is Mode.REAL_TORCH_NPU
    assert decide_mode(None, npu_installed=True, real_loads=lambda: False) is Mode.STAND_IN
    assert decide_mode(None, npu_installed=False) is Mode.UNAVAILABLE


def test_a_choice_forces_the_mode_without_probing():
    def must_not_probe():
        raise AssertionError("probed although the user chose")

    assert decide_mode(None, True, must_not_probe, choice="stand-in") is Mode.STAND_IN
    assert decide_mode(None, True, must_not_probe, choice="real") is Mode.REAL_TORCH_NPU
    assert decide_mode("/opt/cann", True, must_not_probe, choice="stand-in") is Mode.NATIVE


def _cann_less_torchair():
    torchair = require_ge_capture()
    from torchair_plugin.testing import current_mode

    if not current_mode().cann_less:
        pytest.skip("CANN is installed here: nothing is stubbed or patched")
    return torchair


def test_import_is_idempotent_and_thread_safe():
    first = _cann_less_torchair()
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(import_torchair())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(m is first for m in seen)
    assert sys.modules["torchair"] is first  # the module itself, or torch_npu's lazy proxy for it


_STAND_IN_PROCESS = """
import importlib, json, sys
import torchair_plugin
from torchair_plugin.testing import current_mode, import_torchair
import_torchair()
try:
    importlib.import_module("torch_npu")
    blocked = ""
except ImportError as exc:
    blocked = str(exc)
print(json.dumps({"mode": current_mode().name, "blocked": blocked,
                  "left": [n for n in sys.modules if n == "torch_npu" or n.startswith("torch_npu.")],
                  "dispatch_v2": hasattr(torch_ops := __import__("torch").ops.npu, "npu_moe_distribute_dispatch_v2")}))
"""


def test_stand_in_mode_blocks_torch_npu_cleanly_and_defines_the_companions():
    _cann_less_torchair()
    env = dict(os.environ, TORCHAIR_PLUGIN_TORCH_NPU="stand-in", TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    proc = subprocess.run(
        [sys.executable, "-c", _STAND_IN_PROCESS], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["mode"] == "STAND_IN"
    assert "needs CANN" in out["blocked"]
    assert out["left"] == []
    assert out["dispatch_v2"] is True


def test_a_bad_choice_is_one_clear_line(monkeypatch):
    from torchair_plugin.testing import CannLessUnavailable, _torchair_import

    monkeypatch.setenv("TORCHAIR_PLUGIN_TORCH_NPU", "yes")
    with pytest.raises(
        CannLessUnavailable, match=r"TORCHAIR_PLUGIN_TORCH_NPU='yes' is not accepted: use one of real, stand-in"
    ):
        _torchair_import._torch_npu_choice()


def test_interception_is_in_place():
    _cann_less_torchair()
    fx2ge = importlib.import_module("torchair._ge_concrete_graph.fx2ge_converter")
    compat_ir = importlib.import_module("torchair._ge_concrete_graph.compat_ir")
    ge_custom = importlib.import_module("torchair.ge.ge_custom")
    assert fx2ge.initialize_graph_engine({}) is None
    assert compat_ir.is_cann_compat("MoeUpdateExpert", (), ()) == ""
    assert ge_custom._torchair.get_registered_ir_def("AnyOp") == ("SUCCESS", [], [], [])
    with pytest.raises(RuntimeError, match="cannot run without CANN"):
        fx2ge.GeConcreteGraph.__call__(object())


def test_apply_undo_restores_every_patch():
    _cann_less_torchair()
    fx2ge = importlib.import_module("torchair._ge_concrete_graph.fx2ge_converter")
    compat_ir = importlib.import_module("torchair._ge_concrete_graph.compat_ir")
    before = (fx2ge.initialize_graph_engine, compat_ir.is_cann_compat, fx2ge.GeConcreteGraph.__call__)
    patches = _interception.apply_cann_less()
    assert len(patches) == 5
    patches.undo()
    assert (fx2ge.initialize_graph_engine, compat_ir.is_cann_compat, fx2ge.GeConcreteGraph.__call__) == before


def test_apply_that_fails_midway_restores_what_it_patched(monkeypatch):
    _cann_less_torchair()
    fx2ge = importlib.import_module("torchair._ge_concrete_graph.fx2ge_converter")
    compat_ir = importlib.import_module("torchair._ge_concrete_graph.compat_ir")
    sentinel_engine = object()
    monkeypatch.setattr(fx2ge, "initialize_graph_engine", sentinel_engine)
    monkeypatch.delattr(compat_ir, "is_cann_compat")  # as if torchair had moved it
    with pytest.raises(KeyError, match="is_cann_compat"):
        _interception.apply_cann_less()
    assert fx2ge.initialize_graph_engine is sentinel_engine


def test_a_failed_native_import_leaves_no_half_imported_torch_npu(tmp_path):
    """With a CANN directory that is not a working CANN, ``import torch_npu`` fails part-way (in
    the package import and again in import_torchair): none of its submodules may stay behind."""
    if not environment.torch_npu_installed() or environment.cann_home() is not None:
        pytest.skip("needs torch-npu installed on a machine without CANN")
    code = (
        "import sys, torchair_plugin\n"
        "from torchair_plugin.testing import import_torchair\n"
        "left = lambda: sorted(n for n in sys.modules if n.split('.')[0] in ('torch_npu', 'torchair'))\n"
        "print(left())\n"
        "try:\n"
        "    import_torchair()\n"
        "except ImportError:\n"
        "    print(left())\n"
    )
    env = dict(os.environ, ASCEND_HOME_PATH=str(tmp_path), TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["[]", "[]"]


def test_the_capture_hook_is_installed_once_and_undone_like_every_patch():
    _cann_less_torchair()
    from torchair_plugin._process_state import STATE
    from torchair_plugin.testing import capture

    fx2ge = importlib.import_module("torchair._ge_concrete_graph.fx2ge_converter")
    patches = _interception.install_capture_hook(capture._record)
    assert _interception.install_capture_hook(capture._record) is patches is STATE.capture_hook
    original = fx2ge.GeConcreteGraph.optimize_graph_without_runtime.__wrapped__
    try:
        patches.undo()
        assert fx2ge.GeConcreteGraph.optimize_graph_without_runtime is original
    finally:
        STATE.capture_hook = None
        _interception.install_capture_hook(capture._record)  # as the rest of the session expects
    assert fx2ge.GeConcreteGraph.optimize_graph_without_runtime.__wrapped__ is original
