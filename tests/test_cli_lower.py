"""torchair_plugin.cli.lower: the `lower` subcommand, through a parser built here."""

import argparse
import json

import pytest

from torchair_plugin.cli.lower import add_lower_subcommand
from torchair_plugin.testing import CannLessUnavailable
from torchair_plugin.testing.pytest_plugin import require_ge_capture


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="torchair-plugin")
    add_lower_subcommand(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(["lower", *argv])
    except SystemExit as exit_:
        code = exit_.code
    else:
        code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--bs", "x"], "argument --bs: expected an integer, got 'x'"),
        (["--k", "0"], "argument --k: must be in [1, 2147483647], got 0"),
        (["--format", "dot"], "argument --format: invalid choice"),
        (["--optional", "scales"], "argument --optional: invalid choice"),
    ],
)
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == "" and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--bs", "600"], "BS = expert_ids.size(0) must be in (0, 512], got 600"),
        (["--optional", "active_mask"], "active_mask must be None unless expert_scales and pruning_threshold"),
        (["--rank", "9"], "local_rank_id must be in [0, world_size=4), got 9"),
        (["--optional", "expert_scales"], "expert_scales and pruning_threshold must be given together"),
    ],
)
def test_values_the_npu_rejects_get_the_ops_message(argv, message, capsys):
    require_ge_capture()
    code, out, err = run(argv, capsys)
    assert code == 2 and out == "" and message in err and "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--bs", "2000000000"], "BS = expert_ids.size(0) must be in (0, 512], got 2000000000"),
        (["--bs", "40000000", "--k", "16"], "BS = expert_ids.size(0) must be in (0, 512], got 40000000"),
        (["--f", "2000000000"], "F = eplb_table.size(1) must be in (1, world_size+1=5], got 2000000000"),
        (["--experts", "2000000000", "--k", "4"], "moe_expert_num = eplb_table.size(0) must be in (0, 1024]"),
        (["--chain", "--hidden", "2000000000"], "--hidden must be in [1, 65536]"),
        (["--physical-experts", "2000000000"], "--physical-experts must be <= 1024"),
    ],
)
def test_sizes_are_checked_before_anything_is_allocated(argv, message, capsys):
    """Issue 18: these once allocated first (256 GB for --bs 2000000000; 38 s for --bs 40000000)."""
    import resource

    require_ge_capture()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, out, err = run(argv, capsys)
    assert code == 2 and out == "" and message in err and "Traceback" not in err
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200_000, f"peak memory grew by {grown_kib} KiB before the size was refused"


def test_text_pbtxt_and_json(capsys):
    require_ge_capture()
    code, text, _ = run(["--optional", "expert_scales", "pruning_threshold", "--mode", "1", "--dynamic"], capsys)
    assert code == 0 and "MoeUpdateExpert_0: MoeUpdateExpert" in text and "[-1, -1]" in text
    code, pbtxt, _ = run(["--format", "pbtxt"], capsys)
    assert code == 0 and 'op: "MoeUpdateExpert"' in pbtxt
    code, out, err = run(["--chain", "--format", "json"], capsys)
    ops = json.loads(out)  # stdout is the graph alone; which torch_npu captured it is on stderr
    from torchair_plugin.testing import current_mode

    assert err.startswith(f"torchair-plugin lower: captured with {current_mode().value}")
    assert [op["type"] for op in ops][-4:] == [
        "MoeUpdateExpert",
        "MoeDistributeDispatchV2",
        "MoeDistributeCombineV2",
        "NetOutput",
    ]


def test_capture_unavailable_is_one_line_exit_2(monkeypatch, capsys):
    import torchair_plugin.testing as testing

    def unavailable():
        raise CannLessUnavailable("torch-npu is not installed: pip install torch-npu==2.13.0 protobuf")

    monkeypatch.setattr(testing, "import_torchair", unavailable)
    code, out, err = run([], capsys)
    assert code == 2 and out == ""
    assert err == (
        "torchair-plugin lower: error: GE graph capture is unavailable here: "
        "torch-npu is not installed: pip install torch-npu==2.13.0 protobuf\n"
    )


@pytest.mark.parametrize("version,dispatch", [("v1", "MoeDistributeDispatch"), ("v2", "MoeDistributeDispatchV2")])
def test_chain_v1_and_v2(version, dispatch, capsys):
    require_ge_capture()
    code, out, err = run(["--chain", version], capsys)
    assert code == 0, err
    assert f"{dispatch}_0: {dispatch}\n" in out
    code, default, _ = run(["--chain"], capsys)
    assert code == 0 and "MoeDistributeDispatchV2_0" in default  # v2 stays the default
