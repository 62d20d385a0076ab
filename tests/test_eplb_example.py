"""examples/eplb_distributed.py on 4 CPU processes (gloo) agrees with the single-process report."""

import json

import pytest
import torch
from torchrun_here import run_torchrun

from torchair_plugin.eplb import expert_load, load_report, plan_placement, skewed_routing


def test_distributed_example_matches_report(tmp_path):
    # 22 experts on 4 ranks: the no-redundancy layout is uneven (6, 5, 6, 5 experts per rank).
    routing = skewed_routing(22, 4, 700, 4, 1.3, seed=5)  # 700 rows: two op batches per rank
    # Planned for mode 1 with 3 replicas on some experts: mode 0's uneven groups show up too.
    table = plan_placement(expert_load(routing, 22), 4, 8).eplb_table
    torch.save(routing, tmp_path / "routing.pt")
    torch.save(table, tmp_path / "table.pt")
    out = tmp_path / "loads.json"
    done = run_torchrun(
        "eplb_distributed.py",
        "--routing",
        str(tmp_path / "routing.pt"),
        "--table",
        str(tmp_path / "table.pt"),
        "--json",
        str(out),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "balance_mode 1: max/mean" in done.stdout
    distributed = json.loads(out.read_text())
    expected = load_report(routing, table, 4).to_dict()
    assert distributed["slots_per_rank"] == expected["slots_per_rank"]
    for name, loads in expected["scenarios"].items():
        assert distributed["scenarios"][name]["expert_tokens"] == loads["expert_tokens"]
        assert distributed["scenarios"][name]["rank_tokens"] == loads["rank_tokens"]
        assert distributed["scenarios"][name]["imbalance"] == pytest.approx(loads["imbalance"])
