"""``torchair-plugin run -- COMMAND ...``: run a command with torch importable in it.

On a machine with torch-npu but no CANN (a CI image with the ``capture`` extra), ``import torch``
fails, because torch auto-loads the torch_npu backend. ``import torchair_plugin`` before torch
prevents that inside a Python process, but not in a process that imports torch before any code
of the user's runs: ``torchrun`` itself, ``python -c "import torch"``, pytest plugins, a script
that imports torch first. ``run`` starts the command with ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` in
exactly the cases the plugin would set it (torch-npu installed, CANN not found, the variable not
set by you), and otherwise unchanged. The command replaces this process (its exit status and
signals are its own).
"""

from __future__ import annotations

import argparse
import os
import sys

from torchair_plugin import environment
from torchair_plugin.cli import EXIT_BAD_INPUT


def add_run_subcommand(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run",
        help="run a command (torchrun, python, pytest) with torch importable where torch-npu has no CANN",
        description="Run COMMAND with TORCH_DEVICE_BACKEND_AUTOLOAD=0 where torch-npu is installed without "
        "CANN and the variable is not set (there, torch's autoload of torch_npu makes `import torch` fail); "
        "elsewhere run it unchanged.",
        epilog="example: torchair-plugin run -- torchrun --nproc-per-node 4 train.py",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the command and its arguments, after `--`"
    )
    parser.set_defaults(func=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print(
            "torchair-plugin run: error: COMMAND is required, got none (torchair-plugin run -- COMMAND ...)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    environ = environment.for_a_new_process(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, environ)
    except OSError as exc:  # not found, not executable: the exec never happened
        print(f"torchair-plugin run: error: COMMAND {command[0]!r} cannot be run: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
