"""torchair_plugin.testing.pytest_plugin: golden files and the update switch."""

import pytest
from capture_here import uses_stub_cache

from torchair_plugin.testing.pytest_plugin import GoldenFiles, GoldenMismatch

pytest_plugins = ["pytester"]


def test_matching_golden_passes(tmp_path):
    (tmp_path / "g.txt").write_text("A_0: A\n")
    GoldenFiles(tmp_path, update=False).check("A_0: A\n", "g")


def test_mismatch_shows_a_diff_and_the_switch(tmp_path):
    (tmp_path / "g.txt").write_text("A_0: A\n  attr x = 1\n")
    with pytest.raises(GoldenMismatch) as info:
        GoldenFiles(tmp_path, update=False).check("A_0: A\n  attr x = 2\n", "g")
    message = str(info.value)
    assert "-  attr x = 1" in message and "+  attr x = 2" in message and "--update-goldens" in message


def test_missing_golden_fails_saying_how_to_create_it(tmp_path):
    with pytest.raises(GoldenMismatch, match="does not exist.*--update-goldens"):
        GoldenFiles(tmp_path, update=False).check("x\n", "absent")


def test_update_mode_writes(tmp_path):
    GoldenFiles(tmp_path, update=True).check("new\n", "sub/g")
    assert (tmp_path / "sub" / "g.txt").read_text() == "new\n"


def test_golden_names_stay_inside_the_directory(tmp_path):
    with pytest.raises(ValueError):
        GoldenFiles(tmp_path, update=True).path("../escape")


_GOLDEN_TEST = """
def test_g(ge_golden):
    ge_golden.check("captured\\n", "one")
"""


def test_the_switch_end_to_end(pytester, monkeypatch):
    monkeypatch.delenv("TORCHAIR_PLUGIN_UPDATE_GOLDENS", raising=False)
    pytester.makeconftest('pytest_plugins = ["torchair_plugin.testing.pytest_plugin"]')
    pytester.makepyfile(test_g=_GOLDEN_TEST)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1)
    pytester.runpytest("--update-goldens").assert_outcomes(passed=1)
    assert (pytester.path / "goldens" / "one.txt").read_text() == "captured\n"
    (pytester.path / "goldens" / "one.txt").write_text("stale\n")
    monkeypatch.setenv("TORCHAIR_PLUGIN_UPDATE_GOLDENS", "1")
    pytester.runpytest().assert_outcomes(passed=1)
    assert (pytester.path / "goldens" / "one.txt").read_text() == "captured\n"


@uses_stub_cache
def test_unusable_cache_skips_a_capture_module_with_the_reason(pytester, monkeypatch, tmp_path):
    """A module-level require_ge_capture() is a skip naming the cache, not a collection error."""
    (tmp_path / "file").write_text("")
    pytester.makeconftest('import torchair_plugin\npytest_plugins = ["torchair_plugin.testing.pytest_plugin"]')
    pytester.makepyfile(
        test_capture="from torchair_plugin.testing.pytest_plugin import require_ge_capture\n"
        "torchair = require_ge_capture()\n"
        "def test_never_runs():\n"
        "    assert False\n"
    )
    monkeypatch.setenv("TORCHAIR_PLUGIN_CACHE_DIR", str(tmp_path / "file" / "cache"))
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*GE graph capture unavailable: stub cache directory *is not usable*"])


def test_version_goldens_are_written_only_where_the_version_differs(tmp_path):
    from torchair_plugin.testing.pytest_plugin import GoldenFiles

    (tmp_path / "same.txt").write_text("A\n")
    (tmp_path / "differs.txt").write_text("A\n")
    (tmp_path / "v9").mkdir()
    (tmp_path / "v9" / "same.txt").write_text("stale\n")
    writer = GoldenFiles(tmp_path, update=False, tag="v9", for_version=True)
    writer.check("A\n", "same")
    writer.check("B\n", "differs")
    assert not (tmp_path / "v9" / "same.txt").exists()  # equal to the shared one: removed
    assert (tmp_path / "v9" / "differs.txt").read_text() == "B\n"
    assert (tmp_path / "differs.txt").read_text() == "A\n"  # the shared golden is untouched
    GoldenFiles(tmp_path, update=False, tag="v9").check("B\n", "differs")  # that version now reads its own
    GoldenFiles(tmp_path, update=False, tag="v8").check("A\n", "differs")  # others the shared one


@pytest.mark.parametrize("off", ["false", "0", "no", "OFF"])
def test_the_update_switch_set_to_an_off_word_keeps_the_golden_guard(pytester, monkeypatch, off):
    """Issue 18: TORCHAIR_PLUGIN_UPDATE_GOLDENS=false once turned rewriting on."""
    monkeypatch.setenv("TORCHAIR_PLUGIN_UPDATE_GOLDENS", off)
    pytester.makeconftest('pytest_plugins = ["torchair_plugin.testing.pytest_plugin"]')
    pytester.makepyfile(test_g=_GOLDEN_TEST)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1)
    assert not (pytester.path / "goldens").exists()
    monkeypatch.setenv("TORCHAIR_PLUGIN_UPDATE_GOLDENS", "true")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    "name,value",
    [
        ("TORCHAIR_PLUGIN_UPDATE_GOLDENS", "maybe"),
        ("TORCHAIR_PLUGIN_CAPTURE_STRICT", "2"),
        ("TORCHAIR_PLUGIN_TORCH_NPU", "stand_in"),
    ],
)
def test_a_mistyped_variable_is_a_usage_error_before_any_test(pytester, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    pytester.makeconftest('pytest_plugins = ["torchair_plugin.testing.pytest_plugin"]')
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"{name}={value!r} is not accepted" in result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_under_xdist_the_summary_names_the_mode_the_workers_ran_under(monkeypatch):
    """The controller runs no test and imports no torchair: its summary line is the workers'."""
    from types import SimpleNamespace

    from torchair_plugin.testing import describe_capture, pytest_plugin

    worker = SimpleNamespace(config=SimpleNamespace(workeroutput={}))
    pytest_plugin.pytest_sessionfinish(worker)
    assert worker.config.workeroutput == {"torchair_plugin_capture": describe_capture()}

    monkeypatch.setattr(pytest_plugin, "_workers_capture", [])
    monkeypatch.setattr(pytest_plugin, "_written", [])  # no goldens written: the summary is one line
    for described in ("stand-in torchair (a reason)", "stand-in torchair (a reason)"):
        node = SimpleNamespace(workeroutput={"torchair_plugin_capture": described})
        pytest_plugin.pytest_testnodedown(node, None)
    lines = []
    reporter = SimpleNamespace(write_line=lines.append)
    config = SimpleNamespace(getoption=lambda name: 0)
    pytest_plugin.pytest_terminal_summary(reporter, config)
    assert lines == ["torchair-plugin GE capture: stand-in torchair (a reason)"]
