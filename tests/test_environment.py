"""When the plugin turns torch's backend autoload off, and when it must not."""

import os
import shutil
import subprocess
import sys

import pytest

from torchair_plugin import _upstream
from torchair_plugin import environment as env


@pytest.mark.parametrize(
    "environ,torch_imported,npu_installed,cann_dir,expected",
    [
        ({}, False, True, None, True),  # torch-npu without CANN: import torch would fail
        ({}, False, True, "/usr/local/Ascend/cann", False),  # an Ascend machine: keep autoload
        ({}, False, False, None, False),  # no torch-npu: nothing to load
        ({}, True, True, None, False),  # too late, torch is imported
        ({env.AUTOLOAD_VAR: "1"}, False, True, None, False),  # the user decided
    ],
)
def test_autoload_decision(environ, torch_imported, npu_installed, cann_dir, expected):
    assert env.should_disable_backend_autoload(environ, torch_imported, npu_installed, cann_dir) is expected


def test_cann_home_from_the_library_path(tmp_path):
    (tmp_path / "libascendcl.so").write_bytes(b"")
    assert env.cann_home({"LD_LIBRARY_PATH": f"/nonexistent:{tmp_path}"}) == str(tmp_path)


def test_cann_home_from_environment(tmp_path, monkeypatch):
    assert env.cann_home({"ASCEND_HOME_PATH": str(tmp_path)}) == str(tmp_path)
    # A variable naming a missing directory is skipped: with no default install either, no CANN.
    monkeypatch.setattr(env, "_CANN_DEFAULT_DIRS", (str(tmp_path / "no-default-install"),))
    assert env.cann_home({"ASCEND_HOME_PATH": str(tmp_path / "missing")}) is None


@pytest.mark.skipif(not env.torch_npu_installed(), reason="needs torch-npu installed (pip install torch-npu==2.13.0)")
def test_plain_import_works_with_torch_npu_and_no_cann():
    child_env = {k: v for k, v in os.environ.items() if k != env.AUTOLOAD_VAR}
    code = "import torchair_plugin, torch; print(torch.ops.npu.npu_moe_update_expert.default)"
    done = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "npu_moe_update_expert" in done.stdout


@pytest.fixture
def cc():
    path = shutil.which("cc") or shutil.which("gcc")
    if path is None:
        pytest.skip("no C compiler: install gcc")
    return path


def test_c_compiler_honours_cc(cc):
    assert env.c_compiler({"CC": cc}) == [cc]
    assert env.c_compiler({"CC": "/nonexistent/cc"}) == [shutil.which("cc") or shutil.which("gcc")]  # falls back
    assert env.c_compiler({"CC": "  "}) == env.c_compiler({})


def test_a_cc_with_a_launcher_is_the_command_doctor_reports_and_the_build_runs(cc, tmp_path, monkeypatch):
    """CC="ccache gcc" style: the first word runs the rest (issue 12: doctor said ccache, the
    build ran cc). A logging launcher stands in for ccache."""
    from torchair_plugin.cli import _probe
    from torchair_plugin.testing import _stubs

    log = tmp_path / "log"
    launcher = tmp_path / "launcher.sh"
    launcher.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("CC", f"{launcher} {cc}")
    assert env.c_compiler() == [str(launcher), cc]
    assert _probe.capture_requirements("2.13.0", str(tmp_path), None)["c_compiler"] == f"{launcher} {cc}"
    source = tmp_path / "s.c"
    source.write_text("int f(void) { return 1; }\n")
    _stubs._compile(env.c_compiler(), source, tmp_path / "libs.so", "libs.so")
    assert log.read_text().startswith(f"{cc} -shared ")
    assert (tmp_path / "libs.so").is_file()


def test_torch_npu_dir_agrees_with_find_spec():
    import importlib.util

    spec = importlib.util.find_spec("torch_npu")
    expected = list(spec.submodule_search_locations)[0] if spec is not None else None
    assert env.torch_npu_dir() == expected
    assert env.torch_npu_installed() is (expected is not None)


def test_a_torch_npu_without_the_op_is_recognised_and_capture_says_why(tmp_path, monkeypatch):
    """torch-npu 2.5.1 and older have no npu_moe_update_expert: doctor and capture say so plainly."""
    from torchair_plugin._process_state import STATE
    from torchair_plugin.cli import _probe
    from torchair_plugin.testing import CannLessUnavailable, _torchair_import

    converter = tmp_path / _upstream.NATIVE_CONVERTER_FILE
    monkeypatch.setattr(env, "torch_npu_dir", lambda: str(tmp_path))
    assert env.torch_npu_has_op() is False
    converter.parent.mkdir(parents=True)
    converter.write_text("")
    assert env.torch_npu_has_op() is True
    converter.unlink()
    monkeypatch.setattr(_probe, "distribution_version", lambda name: "2.5.1.post1")
    assert "torch_npu_has_op" in _probe.missing_requirements(_probe.capture_requirements("2.5.1", str(tmp_path), None))
    monkeypatch.setattr(env, "torch_npu_installed", lambda: True)
    monkeypatch.setattr(STATE, "torchair", None)  # as in a process that has not captured yet
    with pytest.raises(CannLessUnavailable, match="predates npu_moe_update_expert .* torch-npu >= 2.6"):
        _torchair_import.import_torchair()
