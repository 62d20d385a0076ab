"""When the plugin turns torch's backend autoload off, and when it must not."""

import os
import subprocess
import sys

import pytest

from torchair_plugin import _environment as env


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


def test_cann_home_from_environment(tmp_path):
    assert env.cann_home({"ASCEND_HOME_PATH": str(tmp_path)}) == str(tmp_path)
    assert env.cann_home({"ASCEND_HOME_PATH": str(tmp_path / "missing")}) in (None, *env._CANN_DEFAULT_DIRS)


@pytest.mark.skipif(not env.torch_npu_installed(), reason="needs torch-npu installed (pip install torch-npu==2.13.0)")
def test_plain_import_works_with_torch_npu_and_no_cann():
    child_env = {k: v for k, v in os.environ.items() if k != env.AUTOLOAD_VAR}
    code = "import torchair_plugin, torch; print(torch.ops.npu.npu_moe_update_expert.default)"
    done = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "npu_moe_update_expert" in done.stdout
