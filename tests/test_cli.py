"""The command line: every subcommand's help, doctor's and demo's output, bad arguments."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from capture_here import capture_possible, uses_stub_cache

from torchair_plugin.__main__ import SUBCOMMANDS, build_parser, main

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = ("doctor", "demo", "balance", "report", "lower", "run")
# `run` starts another command: it has no output of its own to give as data.
WITH_JSON = ("doctor", "demo", "balance", "report", "lower")
SMALL_DEMO = ("demo", "--experts", "16", "--world-size", "4", "--tokens-per-rank", "64", "--top-k", "4")


def _run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_every_subcommand_is_wired():
    names = set(build_parser()._subparsers._group_actions[0].choices)
    assert names == set(COMMANDS)
    assert len(SUBCOMMANDS) == len(COMMANDS)


def _subparser(command):
    return build_parser()._subparsers._group_actions[0].choices[command]


def _words(text):
    return " ".join(text.split())  # argparse rewraps paragraphs


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains(capsys, command):
    """The help shows what the command does and explains every option, --json included."""
    status, out, _ = _run(capsys, command, "--help")
    assert status == 0
    assert out.startswith(f"usage: torchair-plugin {command}")
    parser = _subparser(command)
    assert parser.description and _words(parser.description) in _words(out)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert any("--json" in a.option_strings for a in options) is (command in WITH_JSON)
    for action in options:
        assert action.help, f"{command} {action.option_strings[0]} has no help text"
        assert action.option_strings[-1] in out
        assert _words(action.help % vars(action))[:40] in _words(out)


def test_doctor_text(capsys):
    import importlib.metadata

    import torchair_plugin

    status, out, _ = _run(capsys, "doctor")
    assert status == 0
    for heading in ("Versions", "Registration", "Usable here for", "torch-npu", "CANN", "GE converter"):
        assert heading in out
    lines = out.splitlines()
    torch_line = next(line for line in lines if line.split()[:1] == ["torch"])
    assert torch_line.split()[1] == torch.__version__
    npu_line = next(line for line in lines if line.split()[:1] == ["torch-npu"])
    assert importlib.metadata.version("torch-npu") in npu_line
    assert next(line for line in lines if line.split()[:1] == ["CANN"]).split()[1] == "not"  # not found
    report = torchair_plugin.registration_report()
    assert report["converter"] in out and report["fake"] in out


def test_doctor_json_shape(capsys):
    status, out, _ = _run(capsys, "doctor", "--json")
    assert status == 0
    facts = json.loads(out)
    assert set(facts) >= {
        "plugin",
        "python",
        "torch",
        "torch_npu",
        "torchair",
        "protobuf",
        "cann",
        "npu",
        "cuda",
        "capture",
        "registration",
        "usable_for",
        "advice",
        "ok",
    }
    assert facts["ok"] is True
    assert any(use.startswith("eager on CPU") for use in facts["usable_for"])
    assert any(use.startswith("tracing") for use in facts["usable_for"])
    assert set(facts["registration"]) >= {"op", "schema", "fake", "kernels"}
    assert set(facts["capture"]) == {"possible", "requirements", "stub_cache"}
    # No machine of this suite has CANN (an Ascend box runs tests/npu instead).
    assert facts["cann"]["home"] is None
    # The verdict is what happens when capture is tried in this very environment.
    assert facts["capture"]["possible"] is capture_possible() is True
    assert any(use.startswith("GE graph capture without CANN") for use in facts["usable_for"])
    # without CANN, imported only over stubs, by capture (this session's conftest does it)
    assert facts["torch_npu"]["imported"] is ("torch_npu" in sys.modules)
    assert any(line.startswith("CANN: not found") for line in facts["advice"])


def test_report_json(capsys):
    import torchair_plugin

    status, out, _ = _run(capsys, "report", "--json")
    assert status == 0
    assert json.loads(out) == torchair_plugin.registration_report()


def test_demo_text(capsys):
    status, out, err = _run(capsys, *SMALL_DEMO)
    assert status == 0
    assert "npu_moe_update_expert(rank 1 of 4" in out
    assert "-> physical [" in out and "padding" in out
    assert "max/mean rank load: no redundancy" in out
    assert "GE graph of update -> dispatch" in out
    if "capture is not possible here" not in out:
        assert "expert_ids <- MoeUpdateExpert_0:0, x_active_mask <- MoeUpdateExpert_0:1" in out
    assert "[5/5]" in err  # progress lines on stderr


def test_demo_json_keys_and_seed(capsys):
    status, out, err = _run(capsys, *SMALL_DEMO, "--json", "--seed", "3")
    assert status == 0 and err == ""  # --json: no progress lines
    result = json.loads(out)
    assert set(result) == {"config", "table", "op", "load", "imbalance", "capture", "seconds"}
    assert result["config"]["seed"] == 3
    assert set(result["imbalance"]) == {"no redundancy", "balance_mode 0", "balance_mode 1"}
    assert result["imbalance"]["balance_mode 1"] <= result["imbalance"]["no redundancy"]
    assert result["table"]["physical_experts"] == 4 * result["table"]["slots_per_rank"]
    row = result["op"]["rows"][0]
    assert set(row) == {"row", "active", "expert_ids", "expert_scales", "balanced_expert_ids", "balanced_active_mask"}
    assert result["op"]["rows"][-1]["active"] is False
    assert not any(result["op"]["rows"][-1]["balanced_active_mask"])
    capture = result["capture"]
    assert capture["available"] is capture_possible()
    if capture["available"]:
        assert capture["op_types"].count("MoeUpdateExpert") == 1
        assert capture["dispatch_inputs_from_update"] == {
            "expert_ids": "MoeUpdateExpert_0:0",
            "x_active_mask": "MoeUpdateExpert_0:1",
        }
        from torchair_plugin.testing import current_mode

        assert capture["mode"] == current_mode().value  # which torch_npu the chain was captured with
    else:
        assert capture["reason"].startswith("capture is not possible here: ")
    _, again, _ = _run(capsys, *SMALL_DEMO, "--json", "--seed", "3")
    assert json.loads(again)["load"] == result["load"]  # seeded: the same numbers


@pytest.mark.parametrize(
    "argv",
    [
        (),
        ("nonsense",),
        ("doctor", "--frobnicate"),
        ("demo", "--seed", "abc"),
        ("demo", "--seed", "-1"),
        ("demo", "--top-k", "17"),
        ("demo", "--world-size", "1"),
        ("demo", "--skew", "nan"),
        ("demo", "--balance-mode", "2"),
        ("demo", "--experts", "4", "--top-k", "8"),
        ("demo", "--world-size", "2", "--rank", "2"),
        ("demo", "--experts", "4", "--world-size", "2", "--top-k", "2", "--redundant-slots-per-rank", "5"),
        ("balance", "--world-size", "1"),
        ("report", "extra"),
    ],
)
def test_bad_arguments_exit_2_without_traceback(capsys, argv):
    status, out, err = _run(capsys, *argv)
    assert status == 2
    assert "error:" in err and "Traceback" not in err


def test_module_entry_point():
    """`python -m torchair_plugin`, as a user runs it: a usage error is one message, exit 2."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "torchair_plugin", "demo", "--top-k", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--top-k: must be in [1, 16], got 0" in done.stderr and "Traceback" not in done.stderr


@uses_stub_cache
def test_unusable_cache_location_is_one_line_in_lower_and_demo(tmp_path):
    """lower: exit 2 naming the cache (not "cannot lower with these arguments"); demo: exit 0,
    no traceback, capture reported impossible for that reason. One process runs both. The cache
    is the default one under a HOME that is a regular file; which variable wins where is
    test_cache_root_precedence's (tests/test_testing_stubs.py): the process here is the same."""
    (tmp_path / "file").write_text("")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(tmp_path / "file"))
    for name in ("TORCHAIR_PLUGIN_CACHE_DIR", "XDG_CACHE_HOME"):
        env.pop(name, None)
    code = (
        "import contextlib, io, json\n"
        "from torchair_plugin.__main__ import main\n"
        f"for argv in (['lower'], {list(SMALL_DEMO) + ['--json']!r}):\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        status = main(argv)\n"
        "    print(json.dumps([status, out.getvalue(), err.getvalue()]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (lower_status, lower_out, lower_err), (demo_status, demo_out, _) = map(json.loads, done.stdout.splitlines())
    assert lower_status == 2 and lower_out == ""
    assert lower_err.count("\n") == 1 and "Traceback" not in lower_err
    assert "GE graph capture is unavailable here: stub cache directory " in lower_err
    assert str(tmp_path / "file") in lower_err and "TORCHAIR_PLUGIN_CACHE_DIR" in lower_err
    assert demo_status == 0
    capture = json.loads(demo_out)["capture"]
    assert capture["available"] is False
    assert capture["reason"].startswith("capture is not possible here: stub cache directory ")


def test_doctor_does_not_claim_capture_with_an_unusable_cache(capsys, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TORCHAIR_PLUGIN_CACHE_DIR", str(tmp_path / "file" / "cache"))
    status, out, _ = _run(capsys, "doctor", "--json")
    facts = json.loads(out)
    assert facts["capture"]["possible"] is False
    assert facts["capture"]["requirements"]["stub_cache"] is None
    problem = facts["capture"]["stub_cache"]["problem"]
    assert problem.startswith(f"stub cache directory {tmp_path / 'file' / 'cache'} is not usable: ")
    assert not any("without CANN" in use for use in facts["usable_for"])
    if facts["cann"]["home"] is None:
        assert problem in facts["advice"]
    status, out, _ = _run(capsys, "doctor")
    assert "stub_cache              NOT USABLE (see advice)" in out


@pytest.mark.parametrize("argv,status", [(["balance", "--help"], 0), (["not-a-command"], 2)])
def test_the_console_command_flushes_runs_exit_handlers_and_keeps_the_status(argv, status):
    """console_main skips the interpreter's teardown (os._exit) but not what a normal exit does
    that a user can see: buffered output is written, atexit handlers run, the status is kept."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('exit handler ran'))\n"
        "from torchair_plugin.__main__ import console_main\n"
        f"sys.argv = ['torchair-plugin'] + {argv!r}\n"
        "console_main()\n"
        "print('not reached')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    # stdout is a pipe: block-buffered, so unflushed output would be lost by os._exit.
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stderr[-2000:]
    assert done.stdout.rstrip().endswith("exit handler ran")
    assert "not reached" not in done.stdout
    if status == 0:
        assert "usage: torchair-plugin balance" in done.stdout
    else:
        assert "invalid choice: 'not-a-command'" in done.stderr


def test_doctor_reports_the_stub_cache_owner_mode_and_trust(capsys, monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("TORCHAIR_PLUGIN_CACHE_DIR", str(shared))
    status, out, _ = _run(capsys, "doctor", "--json")
    cache = json.loads(out)["capture"]["stub_cache"]
    assert (cache["mode"], cache["trusted"]) == ("0777", False) and "writable by group or others" in cache[
        "trust_problem"
    ]
    shared.chmod(0o700)
    status, out, _ = _run(capsys, "doctor")
    assert f"stub cache {shared} (owner " in out and "mode 0700): trusted" in out


def test_demo_starts_without_torch_npus_environment_warning():
    """Issue 21: torch_npu's 'ASCEND_HOME_PATH environment variable is not set' was the first line.
    demo, the command a new user runs first, lowers its graph through the same function as the
    lower command (testing.lowering.lower), so one process covers both."""
    done = subprocess.run(
        [sys.executable, "-m", "torchair_plugin", *SMALL_DEMO], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "MoeUpdateExpert" in done.stdout  # it got as far as lowering the graph
    assert "ASCEND_HOME_PATH" not in done.stdout + done.stderr
