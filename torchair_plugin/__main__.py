"""``python -m torchair_plugin`` / ``torchair-plugin``: the command-line front door.

Subcommands are listed in :data:`SUBCOMMANDS`, one adder per subcommand module (see
``torchair_plugin.cli``); that list is the only place a new subcommand is wired in.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from torchair_plugin.cli import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE
from torchair_plugin.cli.balance import add_balance_subcommand
from torchair_plugin.cli.demo import add_demo_subcommand
from torchair_plugin.cli.doctor import add_doctor_subcommand
from torchair_plugin.cli.lower import add_lower_subcommand
from torchair_plugin.cli.report import add_report_subcommand
from torchair_plugin.cli.run import add_run_subcommand

# Order is the order of `--help`.
SUBCOMMANDS = [
    add_doctor_subcommand,
    add_demo_subcommand,
    add_balance_subcommand,
    add_report_subcommand,
    add_lower_subcommand,
    add_run_subcommand,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchair-plugin",
        description="npu_moe_update_expert as a first-class TorchAir graph-mode op: check this machine, "
        "see the op at work, and analyse expert-parallel load. `torchair-plugin <command> --help` for more.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one subcommand; return its exit status (2 for bad arguments, as argparse does)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) and usage errors (2): return, do not raise, for callers
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`... | head`): not an error of ours. Point stdout at devnull so
        # that the interpreter's final flush does not raise again (see the `signal` docs' note).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def console_main() -> None:
    """The ``torchair-plugin`` command: :func:`main`, then a quick exit.

    Once the command is done, the interpreter's own teardown (freeing every module torch,
    torch_npu and torchair loaded) takes longer than some whole commands: about 1.5 s after
    ``lower`` on the project's machines (bench/bench_capture.py). The exit handlers still run
    and the output is flushed; only the freeing of memory the OS takes back anyway is skipped.
    Not for in-process callers (tests call :func:`main`).
    """
    status = main()
    import atexit

    # CPython's (private, present since Python 2) runner of the exit handlers, as a normal exit
    # runs them; logging flushes its handlers there, torch_npu shuts its device down.
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:
        sys.exit(status)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a closed reader or stream: nothing left to say
            pass
    os._exit(status)


if __name__ == "__main__":
    console_main()
