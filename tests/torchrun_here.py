"""Run an example under torchrun on CPU processes (gloo), as a user launches it."""

import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(script: str, *args: str, nproc: int = 4, timeout: int = 240) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node nproc examples/<script> args...``; skips where torchrun is missing."""
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this python")
    # torchrun imports torch before the script: on a torch-npu machine without CANN the launcher
    # needs autoload off, as the examples' docstrings tell users.
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    command = [
        str(torchrun),
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(ROOT / "examples" / script),
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
