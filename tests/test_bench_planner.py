"""The drift benchmark's second count of moves: replicas new on their rank (bench/bench_planner.py)."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench():
    folder = pathlib.Path(__file__).resolve().parents[1] / "bench"
    spec = importlib.util.spec_from_file_location("bench_planner", folder / "bench_planner.py")
    module = importlib.util.module_from_spec(spec)
    # The script imports its neighbours (the DeepSeek-style baseline) as a script run would.
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def test_reordering_a_rank_moves_nothing(bench):
    # Slot order within a rank is free: the same experts on the same ranks need no copy, though
    # every slot's expert changed.
    before = np.array([[0, 1, 2, 3]])
    after = np.array([[1, 0, 3, 2]])
    assert (before != after).sum() == 4
    assert bench._new_on_rank(before, after, num_ranks=2) == 0


def test_a_new_id_shifting_sorted_slots_counts_once(bench):
    # Rank 0 trades expert 1 for 5, listed in id order: two slots change, one replica is new.
    before = np.array([[1, 2, 3, 4], [0, 6, 7, 8]]).reshape(1, -1)
    after = np.array([[2, 3, 5, 4], [0, 6, 7, 8]]).reshape(1, -1)
    assert (before != after).sum() == 3
    assert bench._new_on_rank(before, after, num_ranks=2) == 1


def test_an_exchange_between_ranks_is_two_copies_per_layer(bench):
    before = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
    after = np.array([[2, 1, 0, 3], [0, 3, 2, 1]])  # layer 0: 0 <-> 2, layer 1: 1 <-> 3
    assert bench._new_on_rank(before, after, num_ranks=2) == 4
