"""`torchair-plugin report`: the converter's state before and after torchair is imported."""

import json
import os
import pathlib
import subprocess
import sys

from capture_here import capture_possible

import torchair_plugin
from torchair_plugin.__main__ import main
from torchair_plugin.cli import report
from torchair_plugin.testing import CannLessUnavailable, Mode

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _report(*argv):
    """`python -m torchair_plugin report ...` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "torchair_plugin", "report", *argv],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_fresh_process_says_pending_and_what_to_do():
    done = _report()
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    if "pending" in next(line for line in lines if line.startswith("GE converter")):
        assert lines[-1] == report.IN_YOUR_PROCESS
        assert "--import-torchair" in lines[-1] and "torchair_plugin.registration_report()" in lines[-1]
    else:  # torchair not installed: there is nothing to wait for, so no advice
        assert report.IN_YOUR_PROCESS not in done.stdout


def test_import_torchair_shows_the_converter_a_compiling_process_gets():
    done = _report("--import-torchair", "--json")
    if not capture_possible():
        assert done.returncode == 2 and done.stdout == ""
        assert (
            done.stderr.strip()
            .splitlines()[-1]
            .startswith("torchair-plugin report: error: --import-torchair: torchair cannot be imported here: ")
        )
        return
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout)  # stdout is JSON only: torch_npu's warning went to stderr
    assert facts["converter"] == "torchair_plugin"
    assert facts["torchair_imported_by_report"] in {mode.value for mode in Mode}


def test_import_torchair_text_says_how_it_was_imported(capsys):
    capture_possible()  # this session imports torchair as capture does, where it can
    status = main(["report", "--import-torchair"])
    out, err = capsys.readouterr()
    if not capture_possible():
        assert status == 2 and out == "" and err.count("\n") == 1
        return
    assert status == 0
    assert out.splitlines()[:-1] == report.format_registration(torchair_plugin.registration_report())
    assert out.splitlines()[-1].startswith("(torchair imported by this report, as graph capture does: ")


def test_import_impossible_is_one_line_exit_2(monkeypatch, capsys):
    import torchair_plugin.testing as testing

    def unavailable():
        raise CannLessUnavailable("torch-npu is not installed (torchair ships inside it): install torch-npu")

    monkeypatch.setattr(testing, "import_torchair", unavailable)
    assert main(["report", "--import-torchair"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "torchair-plugin report: error: --import-torchair: torchair cannot be imported here: "
        "torch-npu is not installed (torchair ships inside it): install torch-npu\n"
    )
