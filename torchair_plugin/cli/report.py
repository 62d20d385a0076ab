"""``report``: where each piece of npu_moe_update_expert comes from in this process.

The same lines are part of ``doctor``; ``report`` is the quick, quiet form for scripts
(``--json``) and for checking what an opt-out such as ``TORCHAIR_PLUGIN_NATIVE_FAKE=1`` changed.
"""

from __future__ import annotations

import json
from typing import List, Mapping

from torchair_plugin.cli import EXIT_OK

# The dispatch key torch_npu's kernels live under, named as users know it.
_KEY_NAMES = {"PrivateUse1": "NPU (PrivateUse1)"}


def format_registration(sources: Mapping[str, object]) -> List[str]:
    """One line per piece: schema, fake kernel, each device kernel, GE converter."""
    pieces = [("op", sources["op"]), ("schema", sources["schema"]), ("fake kernel", sources["fake"])]
    pieces += [("kernel " + _KEY_NAMES.get(key, key), source) for key, source in sources["kernels"].items()]
    pieces.append(("GE converter", sources["converter"]))
    width = max(len(name) for name, _ in pieces) + 2
    return [f"{name:<{width}}{source}" for name, source in pieces]


def add_report_subcommand(subparsers):
    parser = subparsers.add_parser(
        "report",
        help="where the op's schema, fake kernel, device kernels and GE converter come from",
        description="Print what `import torchair_plugin` registered for torch.ops.npu.npu_moe_update_expert "
        "and where each piece comes from: native (torch-npu) or torchair_plugin. "
        "Set TORCHAIR_PLUGIN_NATIVE_FAKE=1 to keep torch-npu's own fake kernel, "
        "TORCHAIR_PLUGIN_NATIVE_CONVERTER=1 to keep its own GE converter.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run_report)
    return parser


def run_report(args) -> int:
    import torchair_plugin

    sources = torchair_plugin.registration_report()
    if args.json:
        print(json.dumps(sources))
    else:
        print("\n".join(format_registration(sources)))
    return EXIT_OK
