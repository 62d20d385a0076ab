"""`torchair-plugin lower`: rank and world size in mode 1, physical experts for the chain."""

import argparse
import json

import pytest
import torch

from torchair_plugin.cli.lower import add_lower_subcommand
from torchair_plugin.testing.lowering import LowerSpec
from torchair_plugin.testing.pytest_plugin import require_ge_capture
from torchair_plugin.validate import validate_eplb_table


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="torchair-plugin")
    add_lower_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lower", *argv])
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _attrs(ops, op_type):
    return [op["attrs"] for op in ops if op["type"] == op_type]


def test_mode_1_keeps_rank_and_world_size(capsys):
    """Mode 1 ignores them on the NPU, but they are the node's attributes: the graph shows what was passed."""
    require_ge_capture()
    code, out, _ = run(["--mode", "1", "--rank", "2", "--world-size", "8", "--format", "json"], capsys)
    assert code == 0
    (attrs,) = _attrs(json.loads(out), "MoeUpdateExpert")
    assert (attrs["local_rank_id"], attrs["world_size"], attrs["balance_mode"]) == (2, 8, 1)


@pytest.mark.parametrize("argv,moe_expert_num", [([], 16), (["--physical-experts", "32"], 32)])
def test_dispatch_and_combine_get_the_physical_expert_count(argv, moe_expert_num, capsys):
    require_ge_capture()
    code, out, _ = run(["--chain", "--format", "json", *argv], capsys)
    assert code == 0
    ops = json.loads(out)
    for op_type in ("MoeDistributeDispatchV2", "MoeDistributeCombineV2"):
        assert [a["moe_expert_num"] for a in _attrs(ops, op_type)] == [moe_expert_num]


def test_the_example_table_models_the_redundancy():
    """32 physical experts for 16 logical on 4 ranks: every logical expert has two replicas, the
    table is one the validator accepts, and the op maps onto all 32 slots."""
    spec = LowerSpec(experts=16, physical_experts=32, world_size=4, rank=3, bs=64, k=4)
    ids, table = spec.inputs()[:2]
    assert table[:, 0].tolist() == [2] * 16
    assert validate_eplb_table(table, world_size=4) == 32
    balanced, _ = spec.function()(ids, table)
    assert set(balanced.flatten().tolist()) <= set(range(32)) and int(balanced.max()) >= 16
    assert torch.equal(
        LowerSpec(experts=16).inputs()[1][:, :2], torch.stack([torch.ones(16), torch.arange(16)], 1).int()
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--physical-experts", "18"],
            "--physical-experts must be >= --experts=16 and divisible by --world-size=4, got 18",
        ),
        (
            ["--physical-experts", "8"],
            "--physical-experts must be >= --experts=16 and divisible by --world-size=4, got 8",
        ),
        (
            ["--physical-experts", "64", "--f", "3"],
            "--physical-experts=64 puts up to 4 replicas on one of 16 logical experts: eplb_table needs --f >= 5, got 3",
        ),
    ],
)
def test_bad_physical_experts_is_one_line_exit_2(argv, message, capsys):
    code, out, err = run(["--chain", *argv], capsys)
    assert code == 2 and out == ""
    assert err == f"torchair-plugin lower: error: {message}\n"
