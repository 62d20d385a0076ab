"""torchair_plugin.testing._stubs: symbol validation, securec, planning, the cache."""

import ctypes
import json
import os
import shutil
import threading

import pytest

from torchair_plugin import environment
from torchair_plugin.testing import CannLessUnavailable, _stubs
from torchair_plugin.testing._torchair_import import native_modules

needs_cc = pytest.mark.skipif(environment.c_compiler() is None, reason="no C compiler: install gcc")


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
        'x;system("rm -rf /")',
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
    source = _stubs.generate_c_source(
        ["aclrtMalloc", "aclrtMalloc", "snprintf_s", "zeta", "aclInit", "aclrtGetDeviceCount"]
    )
    assert source.count("void aclrtMalloc(void)") == 1  # fatal: it would use a device
    assert source.count("void zeta(void)") == 1
    assert source.count("int aclInit(void)") == 1 and "return 100001;" in source  # refused, not fatal
    assert "*count = 0; return 0;" in source  # no device
    assert "void snprintf_s" not in source  # securec functions are real, not stubs
    assert "int snprintf_s(" in source


@needs_cc
def test_securec_implementations_behave(tmp_path):
    source = tmp_path / "s.c"
    source.write_text(_stubs.generate_c_source(["snprintf_s", "vsnprintf_s", "strcpy_s"]))
    lib_path = tmp_path / "libs.so"
    _stubs._compile(environment.c_compiler(), source, lib_path, "libs.so")
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

    monkeypatch.setattr(environment, "c_compiler", lambda environ=os.environ: None)
    with pytest.raises(_stubs.MissingTool, match="install gcc"):
        _stubs.ensure_stubs(_torchair_modules(), "2.13.0", torch.__version__, root=tmp_path)


def test_plan_reads_the_wheels_own_symbols():
    import torch  # noqa: F401  (torch's libraries must be loaded: they are not stubbed)

    modules = _torchair_modules()
    plan = _stubs.plan_stubs(modules)
    assert {"libascendcl.so", "libge_runner.so", "libhccl.so"} <= set(plan.missing_sonames)
    assert not any(
        s.startswith(("libc.", "libstdc++", "libtorch.", "libtorch_python", "libpython")) for s in plan.missing_sonames
    )
    # securec: whichever of its functions this torch-npu's modules use (not every release does)
    wanted = set().union(*(_stubs.undefined_symbols(m) for m in modules))
    assert {"snprintf_s", "vsnprintf_s", "strcpy_s"} & wanted <= set(plan.symbols)
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
    second = _stubs.ensure_stubs(modules, "2.13.0", torch.__version__, root=tmp_path, cc=["/nonexistent/cc"])
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
    assert sum(r.built for r in results) == 1  # the other waited on the lock, then reused it
    left = [p.name for p in (tmp_path / "stubs").iterdir() if not p.name.endswith(".lock")]
    assert left == [results[0].directory.name]  # no tmp dirs left


# --- damaged entries and unusable cache locations (issue 10, items 5 and 6) -------------------


@pytest.fixture(scope="module")
def good_entry(tmp_path_factory):
    """A complete cache entry, built once; tests damage copies of it."""
    if environment.c_compiler() is None:
        pytest.skip("no C compiler: install gcc")
    import torch

    root = tmp_path_factory.mktemp("cache")
    return _stubs.ensure_stubs(_torchair_modules(), "2.13.0", torch.__version__, root=root)


def _rewrite_manifest(directory, change):
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _truncate(path, size):
    path.write_bytes(path.read_bytes()[:size])


DAMAGE = {
    "truncated manifest": lambda d: _truncate(d / "manifest.json", 100),
    "manifest {}": lambda d: (d / "manifest.json").write_text("{}"),
    "manifest a list": lambda d: (d / "manifest.json").write_text("[1]"),
    "manifest not UTF-8": lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe{"),
    "manifest missing": lambda d: (d / "manifest.json").unlink(),
    "truncated .so": lambda d: _truncate(d / "libtorchair_plugin_cann_stubs.so", 1000),
    "missing .so": lambda d: (d / "libhccl.so").unlink(),
    "soname escapes the entry": lambda d: _rewrite_manifest(
        d, lambda m: m.__setitem__("sonames", ["../../../etc/passwd"])
    ),
    "symbol not an identifier": lambda d: _rewrite_manifest(d, lambda m: m["symbols"].append("a;b")),
    "digests missing": lambda d: _rewrite_manifest(d, lambda m: m.pop("sha256")),
}


def _damaged_copy(entry, tmp_path, damage):
    copy = tmp_path / "stubs" / entry.directory.name
    shutil.copytree(entry.directory, copy)
    DAMAGE[damage](copy)
    return copy


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entry_is_detected(good_entry, tmp_path, damage):
    copy = _damaged_copy(good_entry, tmp_path, damage)
    assert _stubs._load_entry(good_entry.directory, built=False).sonames  # the original is whole
    with pytest.raises(_stubs._DamagedEntry):
        _stubs._load_entry(copy, built=False)


def test_an_entry_path_that_is_a_file_is_damaged(tmp_path):
    (tmp_path / "entry").write_text("not a directory")
    with pytest.raises(_stubs._DamagedEntry, match="is not a directory"):
        _stubs._load_entry(tmp_path / "entry", built=False)
    assert _stubs._load_entry(tmp_path / "absent", built=False) is None


@pytest.mark.parametrize("damage", ["truncated .so", "manifest a list"])
def test_damaged_entry_is_rebuilt_and_loads(good_entry, tmp_path, damage):
    import torch

    copy = _damaged_copy(good_entry, tmp_path, damage)
    entry = _stubs.ensure_stubs(_torchair_modules(), "2.13.0", torch.__version__, root=tmp_path)
    assert entry.built and entry.directory == copy
    assert [p.read_bytes() for p in entry.libraries()] == [p.read_bytes() for p in good_entry.libraries()]
    assert _stubs.preload(entry)  # a truncated .so would have killed the process here (SIGBUS)
    assert sorted(p.name for p in copy.parent.iterdir()) == sorted([copy.name, f".{copy.name}.lock"])


def test_soname_is_validated_like_a_symbol_name():
    assert _stubs.is_soname("libhccl.so") and _stubs.is_soname("libstdc++.so.6")
    for bad in ("../../../etc/passwd", "a/b", ".hidden", "..", "", None, "lib\n.so"):
        assert not _stubs.is_soname(bad)


def _one_line_naming(message, directory):
    assert "\n" not in message
    assert f"stub cache directory {directory} is not usable" in message
    assert _stubs.CACHE_DIR_VAR in message


def test_cache_under_a_regular_file_is_refused_in_one_line(tmp_path):
    import torch

    (tmp_path / "file").write_text("")
    root = tmp_path / "file" / "cache"
    assert _stubs.cache_problem(tmp_path) is None
    _one_line_naming(_stubs.cache_problem(root), root)
    assert f"{tmp_path / 'file'} is not a directory" in _stubs.cache_problem(root)
    with pytest.raises(_stubs.CacheUnusable) as info:
        _stubs.ensure_stubs(_torchair_modules(), "2.13.0", torch.__version__, root=root)
    _one_line_naming(str(info.value), root)


@pytest.mark.parametrize("variable", ["HOME", "XDG_CACHE_HOME"])
def test_home_or_xdg_under_a_regular_file_is_reported(tmp_path, monkeypatch, variable):
    (tmp_path / "file").write_text("")
    for name in (_stubs.CACHE_DIR_VAR, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "file"))  # expanduser reads HOME from os.environ
    root = _stubs.cache_root()
    assert str(root).startswith(str(tmp_path / "file"))
    _one_line_naming(_stubs.cache_problem(root), root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any directory: nothing is unwritable")
def test_damaged_entry_in_a_read_only_cache_says_how_to_clear_it(good_entry, tmp_path):
    import torch

    copy = _damaged_copy(good_entry, tmp_path, "manifest {}")
    (tmp_path / "stubs").chmod(0o500)
    try:
        with pytest.raises(_stubs.CacheUnusable) as info:
            _stubs.ensure_stubs(_torchair_modules(), "2.13.0", torch.__version__, root=tmp_path)
    finally:
        (tmp_path / "stubs").chmod(0o700)
    _one_line_naming(str(info.value), tmp_path)
    assert f"rm -rf '{copy}'" in str(info.value)


def test_a_changed_module_is_a_new_cache_entry(tmp_path):
    import shutil

    import torch

    module = tmp_path / "mod.so"
    shutil.copy(_torchair_modules()[0], module)
    key = _stubs.cache_key("2.13.0", torch.__version__, [str(module)])
    assert _stubs.cache_key("2.13.0", torch.__version__, [str(module)]) == key
    with open(module, "ab") as f:  # a reinstall or another build: other bytes, other size and mtime
        f.write(b"\0")
    assert _stubs.cache_key("2.13.0", torch.__version__, [str(module)]) != key
