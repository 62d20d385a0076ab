"""`torchair-plugin run -- COMMAND`: torch importable in commands that import it before any user code."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from torchair_plugin import environment as env
from torchair_plugin.__main__ import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRINT_AUTOLOAD = f"import os, torch; print(os.environ.get({env.AUTOLOAD_VAR!r}))"

no_cann_here = pytest.mark.skipif(
    not env.torch_npu_installed() or env.cann_home() is not None,
    reason="the launcher matters where torch-npu is installed without CANN (pip install torch-npu==2.13.0)",
)


def _child_env(**extra):
    """This environment as a user's shell has it: no autoload setting (this session's own
    `import torchair_plugin` set one), the checkout importable."""
    child = {k: v for k, v in os.environ.items() if k != env.AUTOLOAD_VAR}
    child["PYTHONPATH"] = str(ROOT)
    child.update(extra)
    return child


def _launch(*command, **extra):
    return subprocess.run(
        [sys.executable, "-m", "torchair_plugin", "run", "--", *command],
        env=_child_env(**extra),
        capture_output=True,
        text=True,
        timeout=300,
    )


@no_cann_here
def test_a_bare_import_torch_fails_and_the_launcher_makes_it_work():
    """The limit the docs state, then the fix: torch auto-loads torch_npu, which fails without CANN."""
    bare = subprocess.run(
        [sys.executable, "-c", "import torch"], env=_child_env(), capture_output=True, text=True, timeout=120
    )
    assert bare.returncode != 0 and "Failed to load the backend extension: torch_npu" in bare.stderr
    launched = _launch(sys.executable, "-c", PRINT_AUTOLOAD)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert launched.stdout.splitlines() == ["0"]


@no_cann_here
def test_torchrun_under_the_launcher(tmp_path):
    """The case no `import torchair_plugin` can fix: torchrun imports torch before the script runs."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    script = tmp_path / "worker.py"
    script.write_text("import os, torch\nprint('rank', os.environ['RANK'], 'ok')\n")
    launched = _launch(torchrun, "--standalone", "--nproc-per-node", "1", str(script))
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert "rank 0 ok" in launched.stdout


def test_the_commands_exit_status_is_the_launchers():
    launched = _launch(sys.executable, "-c", "raise SystemExit(3)")
    assert launched.returncode == 3


def test_a_value_you_set_is_passed_on_unchanged():
    assert env.for_a_new_process({env.AUTOLOAD_VAR: "1"})[env.AUTOLOAD_VAR] == "1"
    launched = _launch(
        sys.executable,
        "-c",
        "import os; print(os.environ['TORCH_DEVICE_BACKEND_AUTOLOAD'])",
        TORCH_DEVICE_BACKEND_AUTOLOAD="0",
    )
    assert launched.stdout.splitlines() == ["0"]


def test_without_torch_npu_or_with_cann_nothing_is_set(tmp_path, monkeypatch):
    monkeypatch.setattr(env, "torch_npu_installed", lambda: False)
    assert env.AUTOLOAD_VAR not in env.for_a_new_process({})
    monkeypatch.setattr(env, "torch_npu_installed", lambda: True)
    assert env.AUTOLOAD_VAR not in env.for_a_new_process({"ASCEND_HOME_PATH": str(tmp_path)})


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run"], "torchair-plugin run: error: COMMAND is required, got none (torchair-plugin run -- COMMAND ...)\n"),
        (
            ["run", "--"],
            "torchair-plugin run: error: COMMAND is required, got none (torchair-plugin run -- COMMAND ...)\n",
        ),
    ],
)
def test_no_command_is_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err == message


def test_a_command_that_cannot_run_is_one_line_exit_2(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    assert main(["run", "--", missing, "--flag"]) == 2
    assert capsys.readouterr().err == (
        f"torchair-plugin run: error: COMMAND {missing!r} cannot be run: No such file or directory\n"
    )
