"""``report``: where each piece of npu_moe_update_expert comes from in this process.

The same lines are part of ``doctor``; ``report`` is the quick, quiet form for scripts
(``--json``) and for checking what an opt-out such as ``TORCHAIR_PLUGIN_NATIVE_FAKE=1`` changed.

The GE converter registers when torchair is imported, which a fresh ``report`` process never
does by itself: ``--import-torchair`` imports it the way graph capture does, so that the report
shows the converter a compiling process gets.
"""

from __future__ import annotations

import json
import sys
from typing import Any, List, Mapping

from torchair_plugin.cli import EXIT_BAD_INPUT, EXIT_OK
from torchair_plugin.registration import ConverterStatus, converter_state

# The dispatch key torch_npu's kernels live under, named as users know it.
_KEY_NAMES = {"PrivateUse1": "NPU (PrivateUse1)"}

IN_YOUR_PROCESS = (
    "torchair is not imported in this process, so its GE converter is not registered yet. "
    "See the state after the import with `torchair-plugin report --import-torchair`, or in your own "
    "process: print(torchair_plugin.registration_report()) after its first compile."
)


def format_registration(sources: Mapping[str, Any]) -> List[str]:
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
        "The GE converter registers when torchair is imported: use --import-torchair here, or call "
        "torchair_plugin.registration_report() in your own process after its first compile. "
        "Set TORCHAIR_PLUGIN_NATIVE_FAKE=1 to keep torch-npu's own fake kernel, "
        "TORCHAIR_PLUGIN_NATIVE_CONVERTER=1 to keep its own GE converter.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--import-torchair",
        action="store_true",
        help="import torchair first, as graph capture does (over stub CANN libraries where there is no CANN), "
        "so that the GE converter's line shows the state a compiling process gets",
    )
    parser.set_defaults(func=run_report)
    return parser


def _import_torchair() -> str:
    """Import torchair as capture does; return how (the capture mode's words)."""
    from torchair_plugin.testing import current_mode, import_torchair

    import_torchair()  # torch_npu's warning about CANN's variables goes to stderr there
    return current_mode().value


def run_report(args) -> int:
    import torchair_plugin

    imported_by_report = None
    if args.import_torchair:
        from torchair_plugin.testing import CannLessUnavailable

        try:
            imported_by_report = _import_torchair()
        except CannLessUnavailable as exc:
            print(
                f"torchair-plugin report: error: --import-torchair: torchair cannot be imported here: {exc}",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
    sources = torchair_plugin.registration_report()
    if args.json:
        if imported_by_report is not None:
            sources = dict(sources, torchair_imported_by_report=imported_by_report)
        print(json.dumps(sources))
        return EXIT_OK
    lines = format_registration(sources)
    if imported_by_report is not None:
        lines.append(f"(torchair imported by this report, as graph capture does: {imported_by_report})")
    elif converter_state().status is ConverterStatus.PENDING:
        lines.append(IN_YOUR_PROCESS)
    print("\n".join(lines))
    return EXIT_OK
