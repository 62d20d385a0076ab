"""examples/eplb_loop.py on 2 CPU processes (gloo), small: one compile per rank and model, the
rebalanced copy beats the static one, replicas moved per applied rebalance, a PNG. Two ranks
exercise every cross-rank part (the table digest check, the all-reduced load) at half the
processes of four, each of which imports torch and compiles its models."""

import json

import pytest
from torchrun_here import run_torchrun


def test_the_loop_rebalances_in_place_with_one_compile_per_rank(tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "loop.json", tmp_path / "loop.png"
    done = run_torchrun(
        "eplb_loop.py",
        "--steps",
        "60",
        "--rebalance-every",
        "20",
        "--drift-every",
        "30",
        "--timing-repeats",
        "3",
        "--json",
        str(out),
        "--png",
        str(png),
        nproc=2,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["compiles_per_rank"] == {"rebalanced": [1] * 2, "static": [1] * 2}
    applied = [entry for entry in result["rebalances"] if entry["applied"]]
    assert len(result["rebalances"]) == 2 and applied
    assert all(sum(entry["replicas_moved"]) > 0 and entry["gain"] >= entry["min_gain"] for entry in applied)
    steps = result["balancedness_per_step"]
    assert len(steps["rebalanced"]) == len(steps["static"]) == 60
    # Before the first rebalance both copies serve the same table and tokens: the same numbers.
    assert steps["rebalanced"][:20] == steps["static"][:20]
    assert result["mean_balancedness"]["rebalanced"] > result["mean_balancedness"]["static"] + 0.05
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "compiles per rank" in done.stdout and "host bincount" in done.stdout


def test_the_loop_through_torchair_ge_lowering_with_frozen_parameter(tmp_path):
    """--backend torchair: every step's graph is lowered to GE (frozen_parameter on) and run
    eagerly; the in-place update keeps the one graph per rank correct."""
    from torchair_plugin.testing.pytest_plugin import require_ge_capture

    require_ge_capture()
    out = tmp_path / "loop.json"
    done = run_torchrun(
        "eplb_loop.py",
        "--steps",
        "40",
        "--rebalance-every",
        "20",
        "--drift-every",
        "30",
        "--timing-repeats",
        "2",
        "--backend",
        "torchair",
        "--run-eagerly",
        "--json",
        str(out),
        nproc=2,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["compiles_per_rank"] == {"rebalanced": [1] * 2, "static": [1] * 2}
    (entry,) = result["rebalances"]
    assert entry["applied"] and sum(entry["replicas_moved"]) > 0
    steps = result["balancedness_per_step"]
    assert steps["rebalanced"][:20] == steps["static"][:20]
    assert sum(steps["rebalanced"][20:]) > sum(steps["static"][20:])
