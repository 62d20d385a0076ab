import argparse
import json
import sys

import numpy as np
import pytest
import torch

from torchair_plugin.eplb import (
    expected_loads,
    format_report,
    load_eplb_table,
    load_report,
    load_routing,
    plan_placement,
    plot_rank_loads,
    skewed_routing,
    expert_load,
)
from torchair_plugin.eplb.cli import add_balance_subcommand


def _uneven_case():
    """world_size 8; expert 0 has 5 replicas (physical 0..4), experts 1..3 one each: 1 slot per rank."""
    table = torch.tensor([[5, 0, 1, 2, 3, 4], [1, 5, -1, -1, -1, -1], [1, 6, -1, -1, -1, -1], [1, 7, -1, -1, -1, -1]],
                         dtype=torch.int32)
    routing = torch.zeros((8, 10, 1), dtype=torch.int64)  # every token of every rank to expert 0
    return routing, table


def test_mode0_uneven_split_truth():
    report = load_report(*_uneven_case(), 8)
    loads = {s.name: s for s in report.scenarios}
    assert loads["no redundancy"].expert_tokens.tolist() == [80, 0, 0, 0, 0, 0, 0, 0]
    # ceil(8 / 5) = 2 source ranks per replica: replicas 1..4 get 20 tokens, the fifth nothing.
    assert loads["balance_mode 0"].expert_tokens.tolist() == [20, 20, 20, 20, 0, 0, 0, 0]
    assert loads["balance_mode 1"].expert_tokens.tolist() == [16, 16, 16, 16, 16, 0, 0, 0]
    assert loads["balance_mode 0"].imbalance == pytest.approx(2.0)
    assert loads["balance_mode 1"].imbalance == pytest.approx(1.6)
    text = format_report(report)
    assert "balance_mode 0: 4" in text  # the idle fifth replica shows
    assert "max/mean" in text


def test_model_agrees_with_the_op_on_uniform_traffic():
    routing, table = _uneven_case()
    load = expert_load(routing, 4)
    for mode in (0, 1):
        measured = load_report(routing, table, 8).scenarios[1 + mode].expert_tokens
        assert expected_loads(table, load, 8, mode) == pytest.approx(measured)


def test_tokens_conserved_and_json_ready():
    routing = skewed_routing(32, 4, 600, 4, 1.2, seed=1)  # 600 rows: two op batches per rank
    table = plan_placement(expert_load(routing, 32), 4, 10).eplb_table
    report = load_report(routing, table, 4)
    for scenario in report.scenarios:
        assert scenario.rank_tokens.sum() == 4 * 600 * 4
    assert json.loads(json.dumps(report.to_dict()))["slots_per_rank"] == 10


@pytest.mark.parametrize(
    "routing, world_size, message",
    [
        (torch.zeros((2, 3, 1), dtype=torch.int64), 8, r"one \(tokens, K\) tensor per rank: 8, got 2"),
        (torch.full((8, 3, 1), 4, dtype=torch.int64), 8, r"routing\[0\]: expert_ids\[0, 0\] must be in \[0, moe_expert_num=4\), got 4"),
        (torch.zeros((8, 3, 1), dtype=torch.float32), 8, r"routing\[0\] must be an int32/int64 tensor"),
        (torch.zeros((8, 3, 5), dtype=torch.int64), 8, r"K in \[1, min\(16, moe_expert_num\)=4\]"),
        (torch.zeros((8, 3, 1), dtype=torch.int64), 1, "world_size must be an int >= 2"),
        (torch.zeros((4, 3, 1), dtype=torch.int64), 4, "replica count of logical expert 0"),
    ],
)
def test_bad_report_input(routing, world_size, message):
    with pytest.raises(ValueError, match=message):
        load_report(routing, _uneven_case()[1], world_size)


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".json"])
def test_files_round_trip(tmp_path, suffix):
    routing, table = _uneven_case()
    for name, value in (("routing", routing), ("table", table)):
        path = str(tmp_path / f"{name}{suffix}")
        if suffix == ".pt":
            torch.save(value, path)
        elif suffix == ".npy":
            np.save(path, value.numpy())
        else:
            json.dump({"routing" if name == "routing" else "eplb_table": value.tolist()}, open(path, "w"))
    assert torch.equal(load_routing(str(tmp_path / f"routing{suffix}")), routing)
    assert torch.equal(load_eplb_table(str(tmp_path / f"table{suffix}"), 8), table)


def _balance(*argv):
    parser = argparse.ArgumentParser(prog="torchair_plugin")
    add_balance_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["balance", *argv])
    return args.func(args)


def test_cli_generated_workload_text_json_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "load.png"
    assert _balance("--world-size", "4", "--experts", "16", "--tokens-per-rank", "64", "--png", str(png)) == 0
    out = capsys.readouterr().out
    assert "no redundancy" in out and "max/mean" in out and png.read_bytes()[:4] == b"\x89PNG"
    assert _balance("--world-size", "4", "--experts", "16", "--tokens-per-rank", "64", "--json", "--plan-mode", "0") == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["scenarios"]) == {"no redundancy", "balance_mode 0", "balance_mode 1"}
    assert result["plan"]["balance_mode"] == 0


def test_cli_saved_files(tmp_path, capsys):
    routing, table = _uneven_case()
    torch.save(routing, tmp_path / "r.pt")
    np.save(tmp_path / "t.npy", table.numpy().astype(np.int64))  # int64 on disk is accepted
    assert _balance("--routing", str(tmp_path / "r.pt"), "--table", str(tmp_path / "t.npy"), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scenarios"]["balance_mode 0"]["expert_tokens"] == [20, 20, 20, 20, 0, 0, 0, 0]


@pytest.mark.parametrize(
    "setup, argv, message",
    [
        (None, ["--table", "{d}/missing.pt"], "missing.pt: no such file"),
        (None, ["--routing", "{d}/r.txt"], "unsupported file type .txt"),
        ("bad_json", ["--table", "{d}/t.json"], "cannot read"),
        ("zero_count", ["--table", "{d}/t.json", "--world-size", "2"], r"eplb_table\[0, 0\] .* got 0"),
        ("float_table", ["--table", "{d}/t.npy", "--world-size", "2"], "eplb_table must hold integers, got dtype float32"),
        ("wrong_key", ["--table", "{d}/t.json", "--world-size", "2"], "no entry 'eplb_table'"),
        ("bad_routing", ["--routing", "{d}/r.pt", "--table", "{d}/t.json"], r"routing\[0\]: expert_ids\[0, 0\]"),
        (None, ["--experts", "4", "--top-k", "8"], "top_k must be <= num_experts=4"),
        (None, ["--skew", "nan"], "skew must be a finite number"),
        (None, ["--slots-per-rank", "1"], r"physical experts must be in \[experts = 64"),
    ],
)
def test_cli_bad_input_exits_2_without_traceback_or_files(tmp_path, capsys, setup, argv, message):
    if setup == "bad_json":
        (tmp_path / "t.json").write_text("{not json")
    elif setup == "zero_count":
        (tmp_path / "t.json").write_text(json.dumps({"eplb_table": [[0, 0], [1, 1]]}))
    elif setup == "float_table":
        np.save(tmp_path / "t.npy", np.ones((2, 2), dtype=np.float32))
    elif setup == "wrong_key":
        (tmp_path / "t.json").write_text(json.dumps({"table": [[1, 0], [1, 1]]}))
    elif setup == "bad_routing":
        (tmp_path / "t.json").write_text(json.dumps({"eplb_table": [[1, 0], [1, 1]]}))
        torch.save(torch.full((2, 3, 1), 9), tmp_path / "r.pt")
    png = tmp_path / "out.png"
    argv = [a.format(d=tmp_path) for a in argv] + ["--png", str(png)]
    assert _balance(*argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("balance: error:") and "Traceback" not in captured.err
    assert len(captured.err.splitlines()) == 1
    assert __import__("re").search(message, captured.err)
    assert not png.exists()


@pytest.mark.parametrize("world_size", ["0", "1", "769", "eight"])
def test_cli_world_size_out_of_range_is_a_usage_error(capsys, world_size):
    with pytest.raises(SystemExit) as exit_info:
        _balance("--world-size", world_size)
    assert exit_info.value.code == 2
    assert "argument --world-size:" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    report = load_report(*_uneven_case(), 8)
    with pytest.raises(ImportError, match=r"pip install torchair-plugin\[plot\]"):
        plot_rank_loads(report, str(tmp_path / "x.png"))
    assert _balance("--world-size", "2", "--experts", "4", "--top-k", "2", "--png", str(tmp_path / "y.png")) == 2
    assert "pip install torchair-plugin[plot]" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()
