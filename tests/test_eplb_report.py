import argparse
import json
import sys

import numpy as np
import pytest
import torch

from torchair_plugin.cli.balance import add_balance_subcommand
from torchair_plugin.eplb import (
    expected_loads,
    expert_load,
    format_report,
    load_eplb_table,
    load_report,
    load_routing,
    plan_placement,
    plot_rank_loads,
    skewed_routing,
)


def _uneven_case():
    """world_size 8; expert 0 has 5 replicas (physical 0..4), experts 1..3 one each: 1 slot per rank."""
    table = torch.tensor(
        [[5, 0, 1, 2, 3, 4], [1, 5, -1, -1, -1, -1], [1, 6, -1, -1, -1, -1], [1, 7, -1, -1, -1, -1]], dtype=torch.int32
    )
    routing = torch.zeros((8, 10, 1), dtype=torch.int64)  # every token of every rank to expert 0
    return routing, table


def test_mode0_uneven_split_truth():
    report = load_report(*_uneven_case(), 8)
    loads = {s.name: s for s in report.scenarios}
    assert loads["no redundancy"].expert_tokens.tolist() == [80, 0, 0, 0]  # one copy per logical expert
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
        (
            torch.full((8, 3, 1), 4, dtype=torch.int64),
            8,
            r"routing\[0\]: expert_ids\[0, 0\] must be in \[0, moe_expert_num=4\), got 4",
        ),
        (torch.zeros((8, 3, 1), dtype=torch.float32), 8, r"routing\[0\] must be an int32/int64 tensor"),
        (torch.zeros((8, 3, 5), dtype=torch.int64), 8, r"K in \[1, min\(16, moe_expert_num\)=4\]"),
        (torch.zeros((8, 3, 1), dtype=torch.int64), 1, r"world_size must be an int in \[2, 768\], got 1"),
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
    assert (
        _balance("--world-size", "4", "--experts", "16", "--tokens-per-rank", "64", "--json", "--plan-mode", "0") == 0
    )
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


def _json(name, value):
    return lambda d: (d / name).write_text(json.dumps(value))


def _npy(name, value):
    return lambda d: np.save(d / name, value)


def _pt(name, value):
    return lambda d: torch.save(value() if callable(value) else value, d / name)


HOSTILE_FILES = {
    "bad_json": lambda d: (d / "t.json").write_text("{not json"),
    "zero_count": _json("t.json", {"eplb_table": [[0, 0], [1, 1]]}),
    "float_table": _npy("t.npy", np.ones((2, 2), dtype=np.float32)),
    "wrong_key": _json("t.json", {"table": [[1, 0], [1, 1]]}),
    "bad_routing": lambda d: (
        _json("t.json", {"eplb_table": [[1, 0], [1, 1]]})(d),
        _pt("r.pt", torch.full((2, 3, 1), 9))(d),
    ),
    "int64_min_json": _json("t.json", {"eplb_table": [[1, -(2**63)], [1, 1]]}),
    "int64_min_npy": _npy("t.npy", np.array([[1, 0], [1, -(2**63)]], dtype=np.int64)),
    "uint64_npy": _npy("t.npy", np.array([[1, 2**63], [1, 1]], dtype=np.uint64)),
    "huge_json": _json("t.json", [[1, 0], [2**70, 1]]),
    "bool_json": _json("t.json", [[True, 0], [1, 1]]),
    "uint64_routing": _npy("r.npy", np.full((2, 3, 1), 2**64 - 1, dtype=np.uint64)),
    "sparse_table": _pt("t.pt", lambda: torch.tensor([[1, 0], [1, 1]], dtype=torch.int32).to_sparse()),
    "sparse_routing": _pt("r.pt", lambda: torch.zeros((2, 3, 1), dtype=torch.int64).to_sparse()),
    "numpy_in_pt": _pt("t.pt", {"eplb_table": np.array([[1, 0], [1, 1]])}),
    "meta_table": _pt("t.pt", lambda: torch.empty((2, 2), dtype=torch.int32, device="meta")),
    "garbage_pt": lambda d: (d / "t.pt").write_bytes(b"\x80\x02garbage"),
    "bfloat16_table": _pt("t.pt", lambda: torch.ones((2, 2), dtype=torch.bfloat16)),
    "table_3d": _npy("t.npy", np.array([[[1, 0], [1, 1]]] * 2, dtype=np.int32)),
    "routing_32": _pt("r.pt", lambda: torch.full((2, 3, 1), 31)),
    "routing_beyond_the_op": _json("r.json", [[[0]], [[1024]]]),
}


@pytest.mark.parametrize(
    "setup, argv, message",
    [
        (None, ["--table", "{d}/missing.pt"], "missing.pt: no such file"),
        (None, ["--routing", "{d}/r.txt"], "unsupported file type .txt"),
        ("bad_json", ["--table", "{d}/t.json"], "cannot read"),
        ("zero_count", ["--table", "{d}/t.json", "--world-size", "2"], r"eplb_table\[0, 0\] .* got 0"),
        (
            "float_table",
            ["--table", "{d}/t.npy", "--world-size", "2"],
            "eplb_table must hold integers, got dtype float32",
        ),
        ("wrong_key", ["--table", "{d}/t.json", "--world-size", "2"], "no entry 'eplb_table'"),
        (
            "bad_routing",
            ["--routing", "{d}/r.pt", "--table", "{d}/t.json"],
            r"r.pt: routing\[0, 0, 0\] must be a logical expert id in \[0, 2\) \(\S*t.json has 2 rows\), got 9",
        ),
        (None, ["--experts", "4", "--top-k", "8"], r"top_k must be an int in \[1, 4\], got 8"),
        (None, ["--skew", "nan"], r"skew must be a number in \[0, 100\], got nan"),
        # Issue 10 item 3: out-of-range values were read as 0; now refused by file, row and column.
        (
            "int64_min_json",
            ["--table", "{d}/t.json", "--world-size", "2"],
            r"t.json: eplb_table\[0, 1\] must be in \[-2147483648, 2147483647\] \(int32\), got -9223372036854775808",
        ),
        (
            "int64_min_npy",
            ["--table", "{d}/t.npy", "--world-size", "2"],
            r"t.npy: eplb_table\[1, 1\] .* got -9223372036854775808",
        ),
        (
            "uint64_npy",
            ["--table", "{d}/t.npy", "--world-size", "2"],
            r"t.npy: eplb_table\[0, 1\] .* got 9223372036854775808",
        ),
        (
            "huge_json",
            ["--table", "{d}/t.json", "--world-size", "2"],
            r"t.json: eplb_table\[1, 0\] must be in .*\(int64\), got 2{70}".replace("2{70}", str(2**70)),
        ),
        (
            "bool_json",
            ["--table", "{d}/t.json", "--world-size", "2"],
            r"t.json: eplb_table\[0, 0\] must be an integer, got True",
        ),
        (
            "uint64_routing",
            ["--routing", "{d}/r.npy"],
            r"r.npy: routing\[0, 0, 0\] must be in .*\(int64\), got 18446744073709551615",
        ),
        # Issue 10 items 4 and 9, and the meta tensor: one line naming the file.
        (
            "sparse_table",
            ["--table", "{d}/t.pt", "--world-size", "2"],
            r"t.pt: eplb_table must be a dense tensor, got layout torch.sparse_coo",
        ),
        (
            "sparse_routing",
            ["--routing", "{d}/r.pt"],
            r"r.pt: routing must be a dense tensor, got layout torch.sparse_coo",
        ),
        (
            "numpy_in_pt",
            ["--table", "{d}/t.pt", "--world-size", "2"],
            r"t.pt: cannot read: it holds a numpy\S* object; only tensors",
        ),
        (
            "meta_table",
            ["--table", "{d}/t.pt", "--world-size", "2"],
            r"t.pt: eplb_table must hold values, got a meta tensor",
        ),
        ("garbage_pt", ["--table", "{d}/t.pt", "--world-size", "2"], r"t.pt: cannot read: not a file torch.save wrote"),
        (
            "bfloat16_table",
            ["--table", "{d}/t.pt", "--world-size", "2"],
            r"t.pt: eplb_table must hold integers or floats, got dtype torch.bfloat16",
        ),
        # Issue 10, "also seen": huge values reached torch/numpy and failed there.
        (
            None,
            ["--seed", str(10**23)],
            r"seed must be an int in \[0, 18446744073709551615\], got 10{23}".replace("10{23}", str(10**23)),
        ),
        (None, ["--experts", "100000000"], r"num_experts must be an int in \[1, 1024\], got 100000000"),
        (None, ["--tokens-per-rank", str(10**11)], r"tokens_per_rank must be an int in \[1, 4194304\]"),
        (
            "routing_beyond_the_op",
            ["--routing", "{d}/r.json"],
            r"r.json: routing\[1, 0, 0\] must be a logical expert id in \[0, 1024\) \(the op takes at most 1024 experts\), got 1024",
        ),
        ("table_3d", ["--table", "{d}/t.npy", "--world-size", "2"], r"t.npy: balance needs one layer's eplb_table"),
        (
            "routing_32",
            ["--routing", "{d}/r.pt", "--experts", "16"],
            r"r.pt: routing\[0, 0, 0\] must be a logical expert id in \[0, 16\) \(--experts\), got 31",
        ),
        (None, ["--slots-per-rank", "1"], r"physical experts must be in \[experts = 64"),
    ],
)
def test_cli_bad_input_exits_2_without_traceback_or_files(tmp_path, capsys, setup, argv, message):
    if setup is not None:
        HOSTILE_FILES[setup](tmp_path)
    png = tmp_path / "out.png"
    argv = [a.format(d=tmp_path) for a in argv] + ["--png", str(png)]
    assert _balance(*argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("torchair-plugin balance: error:") and "Traceback" not in captured.err
    assert len(captured.err.splitlines()) == 1 and "\x1b" not in captured.err
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


def _baseline_golden(routing, num_experts, world_size):
    """No redundancy, computed without the op: E / world_size consecutive experts per rank."""
    per_expert = np.bincount(routing.reshape(-1).numpy(), minlength=num_experts)
    return np.bincount(np.arange(num_experts) * world_size // num_experts, weights=per_expert).tolist()


def test_cli_routing_file_sets_the_expert_count(tmp_path, capsys):
    """Issue 11 item 12: a 32-expert routing was planned for --experts' default 64 ("48 physical
    experts receiving no tokens")."""
    routing = skewed_routing(32, 4, 128, 4, 1.2, seed=3)
    torch.save(routing, tmp_path / "r.pt")
    assert _balance("--routing", str(tmp_path / "r.pt"), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_experts"] == 32 and len(result["eplb_table"]) == 32
    assert result["scenarios"]["no redundancy"]["rank_tokens"] == _baseline_golden(routing, 32, 4)
    assert _balance("--routing", str(tmp_path / "r.pt"), "--experts", "40", "--json") == 0  # unchosen experts
    assert json.loads(capsys.readouterr().out)["num_experts"] == 40


@pytest.mark.parametrize("world_size, num_experts", [(4, 32), (8, 60)])  # 60: not a multiple of 8
def test_no_redundancy_is_a_fixed_baseline(world_size, num_experts):
    """Issue 11 item 12: the baseline used the planned table's first replica, so it moved with
    the plan. Two different plans now share one baseline, equal to an independent golden."""
    routing = skewed_routing(num_experts, world_size, 200, 4, 1.3, seed=7)
    baselines = []
    for mode, slots in ((0, num_experts // world_size + 1), (1, num_experts // world_size + 3)):
        load = expert_load(routing, num_experts, per_source=mode == 0)
        table = plan_placement(load, world_size, slots, balance_mode=mode).eplb_table
        baselines.append(load_report(routing, table, world_size).scenarios[0].rank_tokens.tolist())
    assert baselines[0] == baselines[1] == _baseline_golden(routing, num_experts, world_size)


@pytest.mark.parametrize("world_size", [8, 64, 256])
def test_chart_size_and_setup_stay_readable(tmp_path, world_size):
    """Issue 11 item 13: one bar per rank made a 3400x500 PNG at 64 ranks. The chart keeps one
    size at any rank count, with the setup in its title."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    from torchair_plugin.eplb.plot import setup_line

    num_experts = min(4 * world_size, 512)
    routing = skewed_routing(num_experts, world_size, 16, 2, 1.2, seed=0)
    table = plan_placement(expert_load(routing, num_experts), world_size, num_experts // world_size + 1).eplb_table
    report = load_report(routing, table, world_size)
    path = tmp_path / "chart.png"
    plot_rank_loads(report, str(path), notes=["skew 1.2"])
    width, height = Image.open(path).size
    assert 800 <= width <= 1600 and 400 <= height <= 900 and width / height <= 2.5
    line = setup_line(report, ["skew 1.2"])
    assert (
        line.startswith(f"{world_size} ranks, {num_experts} experts -> ") and "16 tokens/rank, top-2, skew 1.2" in line
    )
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]  # no temporary left behind


def test_chart_write_failure_leaves_nothing(tmp_path):
    pytest.importorskip("matplotlib")
    report = load_report(*_uneven_case(), 8)
    target = tmp_path / "is_a_directory.png"
    target.mkdir()
    with pytest.raises(OSError, match=r"is_a_directory.png: cannot write"):
        plot_rank_loads(report, str(target))
    assert [p.name for p in tmp_path.iterdir()] == ["is_a_directory.png"]
