"""Hostile files and values against the EPLB loaders, the ``balance`` CLI and the EPLB API.

Every outcome is either a valid result or one line that names the file (and the row and column
of a bad value) or the argument: exit 2 from the CLI, ValueError from the library, no traceback,
no terminal escapes, nothing written.
"""

import argparse
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchair_plugin import validate_eplb_table
from torchair_plugin.cli.balance import add_balance_subcommand
from torchair_plugin.eplb import (
    expert_load,
    load_eplb_table,
    load_routing,
    plan_placement,
    skewed_routing,
    table_from_log2phy,
    table_from_phy2log,
    table_from_vllm,
    table_to_log2phy,
)

TABLE = [[1, 0], [1, 1]]  # world_size 2: any change to any entry makes it invalid
ROUTING = [[[0], [1], [0]], [[1], [0], [1]]]  # (2 ranks, 3 tokens, K=1), ids of TABLE's experts
HOSTILE_INTS = [-(2**63), 2**63 - 1, 2**31, -(2**31) - 1, 2**63, 2**64 - 1, 2**70, -(2**70), -1, 2, 10**9]


def _array_file(value, suffix):
    """Bytes-writer for a nested list of ints in a format that can hold it exactly."""
    flat = np.asarray(value, dtype=object).ravel()
    if suffix == ".json" or any(v >= 2**64 or v < -(2**63) for v in flat):
        return ".json", lambda path: path.write_text(json.dumps(value))
    dtype = np.uint64 if any(v >= 2**63 for v in flat) else np.int64
    if suffix == ".npy" or dtype == np.uint64:
        return ".npy", lambda path: np.save(path, np.array(value, dtype=dtype))
    return ".pt", lambda path: torch.save(torch.tensor(value, dtype=torch.int64), path)


@st.composite
def hostile_files(draw, base):
    """(suffix, writer, index or None): one bad value at a known place, or a bad file."""
    kind = draw(st.sampled_from(["value", "entry", "file"]))
    if kind in ("value", "entry"):
        value = json.loads(json.dumps(base))
        index = tuple(draw(st.integers(0, n - 1)) for n in np.shape(base))
        cell = value
        for i in index[:-1]:
            cell = cell[i]
        if kind == "value":
            cell[index[-1]] = draw(st.sampled_from(HOSTILE_INTS))
            suffix, writer = _array_file(value, draw(st.sampled_from([".json", ".npy", ".pt"])))
            return suffix, writer, index
        cell[index[-1]] = draw(st.sampled_from([0.5, True, "1", None, [1], {"a": 1}, 1e400]))
        text = json.dumps(value).replace("Infinity", "1e400")
        return ".json", (lambda path: path.write_text(text)), None
    name, suffix, writer = draw(
        st.sampled_from(
            [
                ("garbage", ".pt", lambda p: p.write_bytes(b"\x80\x02garbage")),
                ("empty", ".pt", lambda p: p.write_bytes(b"")),
                ("empty npy", ".npy", lambda p: p.write_bytes(b"")),
                ("text npy", ".npy", lambda p: p.write_text("[[1, 0]]")),
                ("truncated npy", ".npy", lambda p: p.write_bytes(_npy_bytes(base)[:70])),
                ("truncated json", ".json", lambda p: p.write_text(json.dumps(base)[:-3])),
                ("ragged", ".json", lambda p: p.write_text(json.dumps([[1, 0], [1]]))),
                ("scalar", ".json", lambda p: p.write_text("7")),
                ("empty list", ".json", lambda p: p.write_text("[]")),
                ("wrong key", ".json", lambda p: p.write_text(json.dumps({"x": base}))),
                (
                    "nested dict",
                    ".json",
                    lambda p: p.write_text(json.dumps({"eplb_table": {"routing": base}, "routing": {}})),
                ),
                ("numpy in pt", ".pt", lambda p: torch.save(np.asarray(base), p)),
                ("sparse", ".pt", lambda p: torch.save(torch.tensor(base).to_sparse(), p)),
                ("meta", ".pt", lambda p: torch.save(torch.empty(np.shape(base), device="meta"), p)),
                ("bfloat16", ".pt", lambda p: torch.save(torch.tensor(base, dtype=torch.bfloat16), p)),
                ("complex", ".pt", lambda p: torch.save(torch.tensor(base, dtype=torch.complex64), p)),
                ("float", ".npy", lambda p: np.save(p, np.asarray(base, dtype=np.float64))),
                ("4-d", ".npy", lambda p: np.save(p, np.zeros((1, 1, 1, 1), dtype=np.int64))),
                ("object npy", ".npy", lambda p: np.save(p, np.asarray([{"a": 1}]), allow_pickle=True)),
            ]
        )
    )
    return suffix, writer, None


def _npy_bytes(value):
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(value, dtype=np.int64))
    return buffer.getvalue()


def _one_line_naming(text, *names):
    assert len(text.splitlines()) == 1, text
    assert "\x1b" not in text and "Traceback" not in text, text
    for name in names:
        assert name in text, (name, text)


def _balance(argv):
    parser = argparse.ArgumentParser(prog="torchair_plugin")
    add_balance_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["balance", *argv])
    return args.func(args)


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _balance_refuses(capsys, directory, hostile, flag, companion, write_companion):
    """Write the hostile file and a valid companion; ``balance`` must exit 2 with one line naming
    the hostile file and write nothing. Returns (path, index, stderr)."""
    suffix, writer, index = hostile
    path = directory / f"hostile{suffix}"
    writer(path)
    write_companion(directory / companion)
    other = "--routing" if flag == "--table" else "--table"
    argv = [flag, str(path), other, str(directory / companion), "--png", str(directory / "out.png")]
    assert _balance(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("torchair-plugin balance: error: ")
    _one_line_naming(err, str(path))
    assert sorted(p.name for p in directory.iterdir()) == sorted([companion, path.name])
    return path, index, err


@FUZZ
@given(hostile=hostile_files(TABLE))
def test_hostile_table_files(tmp_path_factory, capsys, hostile):
    path, index, _ = _balance_refuses(
        capsys,
        tmp_path_factory.mktemp("table"),
        hostile,
        "--table",
        "r.pt",
        lambda p: torch.save(torch.tensor(ROUTING), p),
    )
    with pytest.raises(ValueError) as error:
        load_eplb_table(str(path), 2)
    _one_line_naming(str(error.value), str(path))
    if index is not None:
        assert f"[{index[0]}, {index[1]}]" in str(error.value) or "physical expert" in str(error.value)


@FUZZ
@given(hostile=hostile_files(ROUTING))
def test_hostile_routing_files(tmp_path_factory, capsys, hostile):
    # Ids 2 .. 1023 are valid routing on their own; only with the 2-expert table they are not.
    path, index, err = _balance_refuses(
        capsys,
        tmp_path_factory.mktemp("routing"),
        hostile,
        "--routing",
        "t.npy",
        lambda p: np.save(p, np.array(TABLE, dtype=np.int32)),
    )
    if index is not None:
        assert f"routing{list(index)}" in err
    try:
        load_routing(str(path))
    except ValueError as error:
        _one_line_naming(str(error), str(path))


HOSTILE_SCALARS = st.sampled_from(
    [*HOSTILE_INTS, 0, True, 1.5, "2", None, float("nan"), np.int64(-1), np.uint64(2**64 - 1), 10**30, -(10**30)]
)
LOAD = np.array([5.0, 3.0, 1.0, 1.0])
API = {
    "world_size": [
        lambda v: table_from_phy2log([0, 1, 0, 1], v),
        lambda v: table_from_log2phy([[0, 2], [1, 3]], [2, 2], v),
        lambda v: table_from_vllm([[0, 2], [1, 3]], [2, 2], v),
        lambda v: table_to_log2phy(torch.tensor(TABLE, dtype=torch.int32), v),
        lambda v: validate_eplb_table(torch.tensor(TABLE, dtype=torch.int32), v),
        lambda v: skewed_routing(4, v, 8, 2, 1.0),
    ],
    "balance_mode": [
        lambda v: table_from_phy2log([0, 1], 2, balance_mode=v),
        lambda v: validate_eplb_table(torch.tensor(TABLE, dtype=torch.int32), 2, balance_mode=v),
        lambda v: plan_placement(LOAD, 2, 3, balance_mode=v),
    ],
    "num_logical": [lambda v: table_from_phy2log([0, 1], 2, num_logical=v)],
    "num_columns": [
        lambda v: table_from_phy2log([0, 1], 2, num_columns=v),
        lambda v: plan_placement(LOAD, 2, 3, num_columns=v),
    ],
    "width": [lambda v: table_to_log2phy(torch.tensor(TABLE, dtype=torch.int32), 2, width=v)],
    "num_ranks": [lambda v: plan_placement(LOAD, v, 3)],
    "slots_per_rank": [lambda v: plan_placement(LOAD, 2, v)],
    "num_experts": [lambda v: expert_load(torch.tensor(ROUTING), v), lambda v: skewed_routing(v, 2, 8, 1, 1.0)],
    "tokens_per_rank": [lambda v: skewed_routing(4, 2, v, 2, 1.0)],
    "top_k": [lambda v: skewed_routing(4, 2, 8, v, 1.0)],
    "skew": [lambda v: skewed_routing(4, 2, 8, 2, v)],
    "seed": [lambda v: skewed_routing(4, 2, 8, 2, 1.0, v)],
    "phy2log": [lambda v: table_from_phy2log([0, 1, v, 1], 2), lambda v: table_from_phy2log([[0, 1], [v, 0]], 2)],
    "log2phy": [lambda v: table_from_log2phy([[0, v], [1, -1], [2, -1]], [2, 1, 1], 2)],
    "routing": [lambda v: expert_load([[[0], [v]], [[1], [0]]], 4)],
    "load": [lambda v: plan_placement([1.0, v, 1.0, 1.0], 2, 3)],
}


# The hostile values each call accepts (any other one raises a ValueError naming the argument):
# (argument, index of the call in API[argument]) -> values. Measured once, then kept as the spec.
_ANY_SEED = {2**63 - 1, 2**31, 2**63, 2**64 - 1, 2, 10**9, 0}
ACCEPTED = {
    ("balance_mode", 0): {0},
    ("balance_mode", 1): {0},
    ("balance_mode", 2): {0},
    ("load", 0): {2**63 - 1, 2**31, 2**63, 2**64 - 1, 2, 10**9, 0, 1.5, True},  # True: a load of 1.0
    ("num_columns", 0): {2, None},
    ("num_columns", 1): {None},
    ("num_logical", 0): {2, None},
    ("width", 0): {2, None},
    ("phy2log", 0): {2, 0},
    ("phy2log", 1): set(),
    ("log2phy", 0): set(),
    ("routing", 0): {2, 0},
    ("seed", 0): _ANY_SEED,
    ("skew", 0): {2, 0, 1.5},
}


def _accepted(argument, index, value):
    if isinstance(value, bool) and argument != "load":
        return False  # a bool is never an int here
    want = ACCEPTED.get((argument, index), {2})
    try:
        return value in want and not (isinstance(value, float) and value != value)
    except TypeError:
        return False


@settings(max_examples=300, deadline=None)
@given(argument=st.sampled_from(sorted(API)), data=st.data(), value=HOSTILE_SCALARS)
def test_hostile_api_values(argument, data, value):
    index = data.draw(st.integers(0, len(API[argument]) - 1))
    call = API[argument][index]
    if _accepted(argument, index, value):
        call(value)
    else:
        with pytest.raises(ValueError) as error:
            call(value)
        _one_line_naming(str(error.value), argument)
