"""``doctor``: what works here, what is missing, and one line of advice per missing piece.

Exit status 0 when the plugin is usable for something on this machine (each use is tried, not
inferred: a tiny eager call on CPU, a trace under fake tensors), 1 when nothing works.
"""

from __future__ import annotations

import json
from typing import Dict, List

from torchair_plugin.cli import EXIT_OK, EXIT_UNUSABLE, _probe
from torchair_plugin.cli.report import format_registration
from torchair_plugin.registration import ConverterState, ConverterStatus, converter_state

CANN_HINT = "source <CANN toolkit>/set_env.sh (it sets ASCEND_HOME_PATH)"
_REQUIREMENT_ADVICE = {
    "linux": "CANN-less capture: needs Linux (the stub libraries are ELF shared objects)",
    "c_compiler": "C compiler: install gcc (e.g. `apt-get install gcc`) or set $CC; CANN-less capture builds "
    "stub libraries with it",
    "nm": "nm: install binutils (e.g. `apt-get install binutils`); CANN-less capture reads symbol lists with it",
    "readelf": "readelf: install binutils (e.g. `apt-get install binutils`); CANN-less capture reads sonames with it",
    "torch_npu_wheel": "torch-npu: for CANN-less GE capture off-NPU, `pip install 'torchair-plugin[capture]'` "
    "(a torch-npu and protobuf; never on an Ascend machine, it would replace your torch-npu)",
    "torch_npu_matches_torch": "torch-npu and torch differ in major.minor: install the torch-npu release built "
    "for your torch (each torch-npu X.Y pins torch X.Y; docs/compatibility.md)",
    "protobuf": f"protobuf: `pip install 'protobuf>={_probe.MIN_PROTOBUF[0]}.{_probe.MIN_PROTOBUF[1]}'` "
    "(torchair checks it at import)",
    "torch_npu_has_op": "torch-npu: this release predates npu_moe_update_expert (torch-npu 2.6.0 and later have "
    "it; older ones only npu_moe_eplb_update_expert). Here the op is the plugin's own: eager (reference "
    "kernels, also on an NPU, as plain torch ops) and tracing work; CANN-less GE capture and the GE converter "
    "need a torchair that knows the op: use torch-npu >= 2.6 for them (docs/compatibility.md)",
    "capture_layer": "capture layer: this build of torchair-plugin has no torchair_plugin.testing; "
    "update torchair-plugin for CANN-less GE capture",
}


def try_uses(facts: Dict) -> List[str]:
    """The uses that work here; the first two are tried with a real call."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    def call(device=None):
        ids = torch.tensor([[0, 1]], dtype=torch.int32, device=device)
        table = torch.tensor([[2, 0, 1], [2, 2, 3]], dtype=torch.int32, device=device)
        return torch.ops.npu.npu_moe_update_expert(ids, table, world_size=2, local_rank_id=1)

    uses = []
    try:
        ids, _ = call()
        if ids.tolist() == [[1, 3]]:  # rank 1 of 2 takes each expert's second replica
            uses.append("eager on CPU (" + facts["registration"]["kernels"]["CPU"] + ")")
    except Exception:  # reported as absent; the registration lines show which kernel is there
        pass
    try:
        with FakeTensorMode():
            call()
        uses.append("tracing / torch.compile (" + facts["registration"]["fake"] + ")")
    except Exception:
        pass
    if facts["cuda"]:
        uses.append("eager on CUDA (" + facts["registration"]["kernels"]["CUDA"] + ")")
    if facts["npu"]["visible"]:
        uses.append("eager and graph mode on the NPU (" + facts["registration"]["kernels"]["PrivateUse1"] + ")")
    if facts["cann"]["home"] is None and facts["capture"]["possible"]:
        uses.append("GE graph capture without CANN (torchair_plugin.testing)")
    return uses


def advice(facts: Dict, converter: ConverterState) -> List[str]:
    """One line per missing piece, saying what to do (or why it does not matter here)."""
    lines = []
    has_cann = facts["cann"]["home"] is not None
    torch_npu = facts["torch_npu"]["version"]
    if not has_cann:
        lines.append(f"CANN: not found; needed only to run on an NPU: install the CANN toolkit and {CANN_HINT}")
    if torch_npu is None and has_cann:
        lines.append("torch-npu: not installed; install the torch-npu release that matches your CANN and torch")
    if has_cann and torch_npu is not None and not facts["torch_npu"]["imported"]:
        lines.append(
            "torch-npu: installed but failed to import with CANN present; run `python -c 'import torch_npu'` "
            "to see why (often CANN's environment is not sourced: " + CANN_HINT + ")"
        )
    if facts["torchair"]["source"] is None:
        lines.append("torchair: not found; it ships inside torch-npu (torch_npu/dynamo/torchair), install torch-npu")
    if not facts["npu"]["visible"]:
        if has_cann:
            lines.append("NPU: none visible; check the driver (`npu-smi info`) and ASCEND_RT_VISIBLE_DEVICES")
        else:
            lines.append("NPU: none visible; the op runs on the plugin's reference kernel here (CPU, CUDA)")
    if not has_cann:
        for name in _probe.missing_requirements(facts["capture"]["requirements"]):
            if name == "torch_npu_matches_torch" and torch_npu is None:
                continue  # the torch_npu_wheel line already covers it
            if name == "stub_cache":  # the reason depends on the location: say it exactly
                lines.append(facts["capture"]["stub_cache"]["problem"])
            else:
                lines.append(_REQUIREMENT_ADVICE[name])
    if converter.status is ConverterStatus.UNAVAILABLE:
        lines.append("GE converter: torchair is not installed; graph mode needs it (it ships inside torch-npu)")
    elif converter.status is ConverterStatus.PENDING:
        lines.append("GE converter: registers itself when torchair is imported (no action needed)")
    return lines


def _format(facts: Dict) -> str:
    npu = facts["torch_npu"]
    cann = facts["cann"]
    devices = facts["npu"]
    if npu["version"] is None:
        npu_line = "not installed"
    else:
        npu_line = npu["version"] + (" (imported)" if npu["imported"] else " (installed; not imported: no CANN)")
    if cann["home"] is None:
        # torch_npu prints "ASCEND_HOME_PATH environment variable is not set" at every import here;
        # the plugin keeps it out of demo, lower and pytest (pytest -v shows it): said once, here.
        cann_line = "not found (ASCEND_HOME_PATH is not set: torch_npu warns about it at import)"
    else:
        cann_line = f"{cann['version'] or 'version unknown'} at {cann['home']}"
    if devices["torch_npu_device_count"] is not None:
        npu_seen = f"{devices['torch_npu_device_count']} seen by torch_npu"
    else:
        npu_seen = "none visible" if not devices["device_nodes"] else "device nodes present, torch_npu not loaded"
    torchair = facts["torchair"]
    lines = [
        f"torchair-plugin {facts['plugin']} (python {facts['python']})",
        "",
        "Versions",
        f"  torch         {facts['torch']}",
        f"  torch-npu     {npu_line}",
        f"  torchair      {torchair['source'] or 'not found'}",
        f"  protobuf      {facts['protobuf'] or 'not installed'}",
        f"  CANN          {cann_line}",
        f"  NPU           {npu_seen}"
        + (f" ({len(devices['device_nodes'])} /dev/davinci*)" if devices["device_nodes"] else ""),
        "",
    ]
    if cann["home"] is not None:
        lines.append("GE graph capture: CANN is present, torchair lowers and runs graphs natively")
    else:
        verdict = "possible" if facts["capture"]["possible"] else "not possible"
        lines.append(f"GE graph capture without CANN: {verdict}")
        for name, value in facts["capture"]["requirements"].items():
            missing = "NOT USABLE (see advice)" if name == "stub_cache" else "MISSING"
            lines.append(f"  {name:<24}{'ok' if value is True else value or missing}")
        cache = facts["capture"]["stub_cache"]
        if cache["mode"] is None:
            lines.append(f"  stub cache {cache['directory']}: not made yet (it will be private, mode 0700)")
        elif cache["trusted"]:
            lines.append(f"  stub cache {cache['directory']} (owner {cache['owner']}, mode {cache['mode']}): trusted")
        else:
            lines.append(
                f"  stub cache NOT TRUSTED: {cache['trust_problem']}; capture builds in a private "
                "directory per process instead"
            )
    lines += ["", "Registration"] + ["  " + line for line in format_registration(facts["registration"])]
    lines += ["", "Usable here for"] + ([f"  - {use}" for use in facts["usable_for"]] or ["  nothing"])
    if facts["advice"]:
        lines += ["", "Advice"] + [f"  - {line}" for line in facts["advice"]]
    return "\n".join(lines)


def add_doctor_subcommand(subparsers):
    parser = subparsers.add_parser(
        "doctor",
        help="versions, NPU, CANN-less capture prerequisites, what the plugin registered, advice",
        description="Check this machine: torch, torch-npu, torchair and CANN versions (or their absence), "
        "whether an NPU is visible, whether GE graphs can be captured without CANN here, and where the op's "
        "schema, fake kernel, device kernels and GE converter come from. One line of advice per missing "
        "piece. Exit status 0 when the plugin is usable for something here, 1 otherwise. "
        "Never imports torch_npu on a machine without CANN.",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    parser.set_defaults(func=run_doctor)
    return parser


def run_doctor(args) -> int:
    facts = _probe.collect()
    facts["usable_for"] = try_uses(facts)
    facts["advice"] = advice(facts, converter_state())
    facts["ok"] = bool(facts["usable_for"])
    print(json.dumps(facts) if args.json else _format(facts))
    return EXIT_OK if facts["ok"] else EXIT_UNUSABLE
