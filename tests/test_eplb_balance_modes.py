"""Every EPLB helper that takes a balance_mode validates the table for that mode, not for mode 0.

The table below is valid for balance_mode 1 only: mode 1 ignores world_size, so an expert may
have more replicas than there are ranks and F may exceed world_size + 1; mode 0 forbids both."""

import numpy as np
import pytest
import torch

from torchair_plugin.eplb import (
    expected_loads,
    load_eplb_table,
    table_from_log2phy,
    table_from_phy2log,
    table_from_vllm,
    table_to_log2phy,
    table_to_phy2log,
)

WORLD = 2
PHY2LOG = [0, 0, 0, 1]  # expert 0 three times on two ranks: fine for mode 1, not for mode 0
MODE1_TABLE = torch.tensor([[3, 0, 1, 2], [1, 3, -1, -1]], dtype=torch.int32)
LOG2PHY, LOGCNT = [[0, 1, 2], [3, -1, -1]], [3, 1]


def _save(tmp_path):
    path = tmp_path / "table.npy"
    np.save(path, MODE1_TABLE.numpy())
    return str(path)


HELPERS = {
    "expected_loads": lambda mode, tmp: expected_loads(MODE1_TABLE, [[6.0, 2.0], [3.0, 1.0]], WORLD, balance_mode=mode),
    "load_eplb_table": lambda mode, tmp: load_eplb_table(_save(tmp), WORLD, balance_mode=mode),
    "table_from_phy2log": lambda mode, tmp: table_from_phy2log(PHY2LOG, WORLD, balance_mode=mode),
    "table_from_log2phy": lambda mode, tmp: table_from_log2phy(LOG2PHY, LOGCNT, WORLD, balance_mode=mode),
    "table_from_vllm": lambda mode, tmp: table_from_vllm(LOG2PHY, LOGCNT, WORLD, balance_mode=mode),
    "table_to_log2phy": lambda mode, tmp: table_to_log2phy(MODE1_TABLE, WORLD, balance_mode=mode),
    "table_to_phy2log": lambda mode, tmp: table_to_phy2log(MODE1_TABLE, WORLD, balance_mode=mode),
}


@pytest.mark.parametrize("helper", HELPERS)
def test_a_mode1_table_is_accepted_for_mode_1(helper, tmp_path):
    HELPERS[helper](1, tmp_path)


@pytest.mark.parametrize("helper", HELPERS)
def test_the_same_table_is_refused_for_mode_0_naming_the_rule(helper, tmp_path):
    with pytest.raises(ValueError, match=r"eplb_table|replica|count|world_size|F"):
        HELPERS[helper](0, tmp_path)


def test_expected_loads_for_mode_1_splits_by_row_among_the_replicas():
    # load (source ranks, experts): expert 0 gets 9 tokens in all, split three ways by row.
    loads = expected_loads(MODE1_TABLE, [[6.0, 2.0], [3.0, 1.0]], WORLD, balance_mode=1)
    assert loads.tolist() == pytest.approx([3.0, 3.0, 3.0, 3.0])
