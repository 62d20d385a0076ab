"""torchair_plugin.testing._stubs: symbol validation, securec, planning, the cache."""

import ctypes
import os
import shutil
import threading

import pytest

from torchair_plugin.testing import CannLessUnavailable, _stubs
from torchair_plugin.testing._torchair_import import native_modules

needs_cc = pytest.mark.skipif(_stubs.find_c_compiler() is None, reason="no C compiler: install gcc")


def _torchair_modules():
    try:
        return native_modules()
    except CannLessUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize(
    "name",
    [
        "aclInit",
        "snprintf_s",
        "_ZNK2ge5Graph11GetAllNodesEv",
        "_",
        "HcclSetConfig",
    ],
)
def test_c_identifiers_are_accepted(name):
    assert _stubs.is_c_identifier(name)
    assert _stubs.validate_symbol_names([name]) == [name]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "memcpy@GLIBC_2.14",
        "1abc",
        "a b",
        "x;system(\"rm -rf /\")",
        "foo\n",
        "a-b",
        "caf\u00e9",
        "name\x00",
        'quote"',
        "_ZN2ge5Graph.cold",
    ],
)
def test_non_identifiers_are_rejected(name):
    assert not _stubs.is_c_identifier(name)
    with pytest.raises(ValueError, match="refusing to write 1 symbol"):
        _stubs.validate_symbol_names(["aclInit", name])
    with pytest.raises(ValueError):
        _stubs.generate_c_source([name])


def test_non_strings_are_rejected():
    assert not _stubs.is_c_identifier(None)
    assert not _stubs.is_c_identifier(b"aclInit")


def test_generated_source_defines_each_symbol_once():
    source = _stubs.generate_c_source(["aclInit", "aclInit", "snprintf_s", "zeta"])
    assert source.count("void aclInit(void)") == 1
    assert source.count("void zeta(void)") == 1
    assert "void snprintf_s" not in source  # securec functions are real, not stubs
    assert "int snprintf_s(" in source


@needs_cc
def test_securec_implementations_behave(tmp_path):
    source = tmp_path / "s.c"
    source.write_text(_stubs.generate_c_source(["snprintf_s", "vsnprintf_s", "strcpy_s"]))
    lib_path = tmp_path / "libs.so"
    _stubs._compile(_stubs.find_c_compiler(), source, lib_path, "libs.so")
    lib = ctypes.CDLL(str(lib_path))
    buf = ctypes.create_string_buffer(8)

    lib.snprintf_s.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_int]
    assert lib.snprintf_s(buf, 8, 7, b"n=%d", 42) == 4
    assert buf.value == b"n=42"
    assert lib.snprintf_s(buf, 8, 7, b"%d", 123456789) == -1  # truncated
    assert buf.value == b"1234567"
    assert lib.snprintf_s(buf, 8, 2, b"%d", 12345) == -1  # count limits below dest_max
    assert buf.value == b"12"
    assert lib.snprintf_s(None, 8, 7, b"x", 0) == -1

    lib.strcpy_s.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
    assert lib.strcpy_s(buf, 8, b"abc") == 0
    assert buf.value == b"abc"
    assert lib.strcpy_s(buf, 8, b"too long!") != 0
    assert buf.value == b""
    assert lib.strcpy_s(buf, 0, b"a") != 0


def test_cache_root_precedence(tmp_path):
    home = os.path.expanduser("~")
    assert _stubs.cache_root({}) == _stubs.Path(home, ".cache", "torchair-plugin")
    assert _stubs.cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "torchair-plugin"
    env = {"XDG_CACHE_HOME": "/elsewhere", _stubs.CACHE_DIR_VAR: str(tmp_path / "mine")}
    assert _stubs.cache_root(env) == tmp_path / "mine"


def test_missing_compiler_says_install_gcc(tmp_path, monkeypatch):
    import torch  # noqa: F401

    monkeypatch.setattr(_stubs, "find_c_compiler", lambda environ=os.environ: None)
    with pytest.raises(_stubs.MissingTool, match="install gcc"):
        _stubs.ensure_stubs(_torchair_modules(), "2.13.0", torch.__version__, root=tmp_path)


def test_find_c_compiler_honours_cc():
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler: install gcc")
    assert _stubs.find_c_compiler({"CC": cc}) == cc
    assert _stubs.find_c_compiler({"CC": "/nonexistent/cc"}) is not None  # falls back to cc/gcc


def test_plan_reads_the_wheels_own_symbols():
    import torch  # noqa: F401  (torch's libraries must be loaded: they are not stubbed)

    plan = _stubs.plan_stubs(_torchair_modules())
    assert {"libascendcl.so", "libge_runner.so", "libhccl.so"} <= set(plan.missing_sonames)
    assert not any(s.startswith(("libc.", "libstdc++", "libtorch.", "libtorch_python", "libpython")) for s in plan.missing_sonames)
    assert {"snprintf_s", "vsnprintf_s", "strcpy_s"} <= set(plan.symbols)
    assert any(s.startswith("acl") for s in plan.symbols)
    assert not any(s.startswith(("Py", "_Py")) for s in plan.symbols)  # libpython provides them
    assert all(_stubs.is_c_identifier(s) for s in plan.symbols)


@needs_cc
def test_cache_is_built_once_then_reused(tmp_path):
    import torch

    modules = _torchair_modules()
    first = _stubs.ensure_stubs(modules, "2.13.0", torch.__version__, root=tmp_path)
    assert first.built
    assert all(p.is_file() for p in first.libraries())
    mtimes = [p.stat().st_mtime_ns for p in first.libraries()]
    # A compiler that cannot run proves the second call compiles nothing.
    second = _stubs.ensure_stubs(modules, "2.13.0", torch.__version__, root=tmp_path, cc="/nonexistent/cc")
    assert not second.built
    assert second.directory == first.directory
    assert [p.stat().st_mtime_ns for p in second.libraries()] == mtimes
    # Another torch-npu version is another entry.
    assert _stubs.cache_key("2.14.0", torch.__version__, modules) != first.directory.name


@needs_cc
def test_concurrent_builds_leave_one_complete_entry(tmp_path):
    import torch

    modules = _torchair_modules()
    results, errors = [], []

    def build():
        try:
            results.append(_stubs.ensure_stubs(modules, "2.13.0", torch.__version__, root=tmp_path))
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.directory for r in results}) == 1
    assert [p.name for p in (tmp_path / "stubs").iterdir()] == [results[0].directory.name]  # no tmp dirs left
