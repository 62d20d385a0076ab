"""Where the time of ``torchair-plugin lower`` and of a capture goes, part by part.

Each run is a fresh interpreter (as a user's ``lower`` or pytest session is), with warm caches
(the stub libraries are built and the file cache is warm). The child times its own parts with
``perf_counter``; the parent also times the whole ``torchair-plugin lower`` command. Medians of
``--repeat`` runs; the shares are of the child's total, so they survive a noisy machine.

    python bench/bench_capture.py [--repeat 5] [--json bench/results/capture.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_CHILD = r"""
import json, time
t = [("start", time.perf_counter())]
def mark(name): t.append((name, time.perf_counter()))
import torchair_plugin
import torch
mark("import torch + torchair_plugin")
from torchair_plugin.testing import _torchair_import, import_torchair, current_mode
stubs, _ = _torchair_import.preload_stubs(real_torch_npu=True)
mark("stub libraries (cached) + preload")
import torch_npu
mark("import torch_npu (real, over stubs)")
import_torchair()
mark("import torchair + interception + companions")
from torchair_plugin.testing.lowering import LowerSpec, lower
graph = lower(LowerSpec())
mark("first capture (Dynamo, AOT, lowering)")
text = graph.text
mark("render text")
for _ in range(3):
    lower(LowerSpec(bs=16))
mark("3 further captures")
parts = {name: t[i][1] - t[i - 1][1] for i, (name, _) in enumerate(t) if i}
print(json.dumps({"mode": current_mode().value, "parts": parts}))
"""


# A plain interpreter exit frees every module torch, torch_npu and torchair loaded: ~1.5 s here,
# which the ``torchair-plugin`` command skips (torchair_plugin.__main__.console_main).
STARTUP_AND_TEARDOWN = "interpreter start + teardown at a plain exit"


def _child_env() -> dict:
    return dict(os.environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0", PYTHONWARNINGS="ignore")


def run_child() -> dict:
    """The child's parts, plus what it cannot time itself: the interpreter's start and teardown."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=_child_env(), check=True)
    wall = time.perf_counter() - started
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    child["parts"][STARTUP_AND_TEARDOWN] = wall - sum(child["parts"].values())
    return child


# ``lower`` as the command ran before it skipped the teardown: main(), then a plain exit.
_LOWER_WITH_PLAIN_EXIT = "import sys; from torchair_plugin.__main__ import main; sys.exit(main(['lower']))"


def time_lower_command(plain_exit: bool = False) -> float:
    command = ["-c", _LOWER_WITH_PLAIN_EXIT] if plain_exit else ["-m", "torchair_plugin", "lower"]
    started = time.perf_counter()
    subprocess.run([sys.executable, *command], capture_output=True, env=_child_env(), check=True)
    return time.perf_counter() - started


def time_bare_import() -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import torchair_plugin, torch"], capture_output=True, env=_child_env(), check=True
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    run_child()  # warm: builds stubs and runs the real-torch_npu probe once
    children = [run_child() for _ in range(args.repeat)]
    parts = {name: statistics.median(c["parts"][name] for c in children) for name in children[0]["parts"]}
    total = sum(parts.values())
    lower_runs, plain_exit_runs = [], []
    for _ in range(args.repeat):  # interleaved: both see the same drift of the machine's speed
        lower_runs.append(time_lower_command())
        plain_exit_runs.append(time_lower_command(plain_exit=True))
    lower_s, plain_exit_s = statistics.median(lower_runs), statistics.median(plain_exit_runs)
    bare_s = statistics.median(time_bare_import() for _ in range(args.repeat))
    print(f"capture mode: {children[0]['mode']}; medians of {args.repeat} fresh processes")
    for name, seconds in parts.items():
        print(f"  {name:<45} {seconds:7.3f} s  {seconds / total:6.1%}")
    print(f"  {'total (wall time of the child)':<45} {total:7.3f} s")
    further = parts["3 further captures"] / 3
    print(f"torchair-plugin lower (whole command):          {lower_s:7.3f} s")
    print(
        f"the same with a plain interpreter exit (before): {plain_exit_s:7.3f} s  "
        f"(now {lower_s / plain_exit_s:.2f}x of it)"
    )
    print(f"python -c 'import torchair_plugin, torch':      {bare_s:7.3f} s  ({bare_s / lower_s:.0%} of lower)")
    print(f"each further capture in a process:              {further:7.3f} s")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "parts": parts,
                    "lower_s": lower_s,
                    "lower_plain_exit_s": plain_exit_s,
                    "bare_import_s": bare_s,
                    "further_capture_s": further,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
