"""``torchair-plugin balance --loads``: a whole model from a per-layer load file."""

import argparse
import json
import re

import numpy as np
import pytest
import torch
from test_eplb_model_planner import golden_balancedness

from torchair_plugin.cli.balance import add_balance_subcommand


def _balance(*argv):
    parser = argparse.ArgumentParser(prog="torchair_plugin")
    add_balance_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["balance", *argv])
    return args.func(args)


def _loads(seed, layers=3, experts=32):
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(1.0 / np.arange(1, experts + 1) ** 1.2) for _ in range(layers)]) * 1000


def test_plan_then_replan_with_previous(tmp_path, capsys):
    np.save(tmp_path / "a.npy", _loads(0))
    np.save(tmp_path / "b.npy", _loads(1))
    assert _balance("--loads", str(tmp_path / "a.npy"), "--world-size", "4", "--out", str(tmp_path / "t.pt")) == 0
    text = capsys.readouterr().out
    assert "before = no redundancy" in text and "plan took" in text and text.count("\n") >= 6
    tables = torch.load(tmp_path / "t.pt")
    assert tables.shape[:2] == (3, 32)

    argv = ["--loads", str(tmp_path / "b.npy"), "--world-size", "4", "--previous", str(tmp_path / "t.pt"), "--json"]
    assert _balance(*argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["before"] == "previous tables" and result["slots_per_rank"] == 10
    loads = _loads(1)
    before = [golden_balancedness(table, load, 4, 1) for table, load in zip(tables, loads)]
    assert result["balancedness_before"] == pytest.approx(before)
    assert result["model_before"] == pytest.approx(np.mean(before))
    assert len(result["moved"]) == 3 and all(0 <= m <= 40 for m in result["moved"])
    assert result["model_after"] >= result["model_before"]


def test_text_report_lists_moves_and_totals(tmp_path, capsys):
    np.save(tmp_path / "a.npy", _loads(0))
    assert _balance("--loads", str(tmp_path / "a.npy"), "--world-size", "4", "--out", str(tmp_path / "t.npy")) == 0
    capsys.readouterr()
    assert _balance("--loads", str(tmp_path / "a.npy"), "--world-size", "4", "--previous", str(tmp_path / "t.npy")) == 0
    text = capsys.readouterr().out
    assert "moved" in text and "(0 of 120 slots moved)" in text  # same loads: nothing moves


@pytest.mark.parametrize(
    "setup, argv, message",
    [
        ("one_d", ["--loads", "{d}/l.npy"], r"l.npy: loads must have 2 dimensions"),
        (
            "ok",
            ["--loads", "{d}/l.npy", "--routing", "{d}/r.pt"],
            r"--loads plans a whole model: it takes no --routing",
        ),
        ("ok", ["--loads", "{d}/l.npy", "--slots-per-rank", "1"], r"num_ranks \* slots_per_rank = 8 physical experts"),
        ("ok", ["--loads", "{d}/l.npy", "--previous", "{d}/missing.pt"], r"missing.pt: no such file"),
        ("ok", ["--loads", "{d}/l.npy", "--out", "{d}/t.txt"], r"--out .*t.txt: use a .pt or .npy file"),
        ("ok", ["--loads", "{d}/l.npy", "--max-loss", "2"], r"max_loss must be a number in \[0, 1\]"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, setup, argv, message):
    np.save(tmp_path / "l.npy", np.ones(8) if setup == "one_d" else np.ones((2, 16)))
    assert _balance(*[a.format(d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchair-plugin balance: error:") and "Traceback" not in err
    assert err.count("\n") == 1
    assert re.search(message, err), err
