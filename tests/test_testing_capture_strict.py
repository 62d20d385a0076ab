"""--ge-capture-strict / TORCHAIR_PLUGIN_CAPTURE_STRICT=1: "capture cannot run here" fails, not skips.

Capture is made impossible the way a broken CI image makes it: the stub cache cannot be created
(TORCHAIR_PLUGIN_CACHE_DIR under a regular file). Each run is a fresh pytest process, since this
one has captured already.
"""

import pytest
from capture_here import uses_stub_cache

pytest_plugins = ["pytester"]

pytestmark = uses_stub_cache

_CONFTEST = 'pytest_plugins = ["torchair_plugin.testing.pytest_plugin"]'
_MODULE_LEVEL = (
    "from torchair_plugin.testing.pytest_plugin import require_ge_capture\n"
    "require_ge_capture()\n"
    "def test_graph():\n"
    "    pass\n"
)
_FIXTURE = "def test_graph(ge_torchair):\n    pass\n"


@pytest.fixture
def no_capture(pytester, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TORCHAIR_PLUGIN_CACHE_DIR", str(tmp_path / "file" / "cache"))
    monkeypatch.delenv("TORCHAIR_PLUGIN_CAPTURE_STRICT", raising=False)
    pytester.makeconftest(_CONFTEST)
    return pytester


def test_the_option_fails_a_module_that_requires_capture(no_capture):
    no_capture.makepyfile(test_module_level=_MODULE_LEVEL)
    result = no_capture.runpytest_subprocess("--ge-capture-strict", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*GE graph capture unavailable (--ge-capture-strict*stub cache directory*"])


def test_the_environment_variable_fails_a_test_using_the_fixture(no_capture, monkeypatch):
    no_capture.makepyfile(test_fixture=_FIXTURE)
    monkeypatch.setenv("TORCHAIR_PLUGIN_CAPTURE_STRICT", "1")
    result = no_capture.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)  # pytest counts a fixture's failure as an error
    result.stdout.fnmatch_lines(["*GE graph capture unavailable*TORCHAIR_PLUGIN_CAPTURE_STRICT=1*stub cache*"])


def test_without_the_switch_the_same_tests_skip(no_capture):
    no_capture.makepyfile(test_module_level=_MODULE_LEVEL, test_fixture=_FIXTURE)
    no_capture.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(skipped=2)
