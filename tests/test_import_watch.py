"""torchair_plugin._import_watch: the one sys.meta_path finder, watching or refusing an import."""

import importlib
import importlib.util
import sys

import pytest

from torchair_plugin import _import_watch


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package of this test's own, importable from tmp_path."""
    name = "tpl_watched_package"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("VALUE = 42\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_before_and_after_run_around_the_import(package):
    seen = []
    _import_watch.watch(
        "tpl-test",
        (package,),
        before=lambda: seen.append("before"),
        after=lambda module, ok: seen.append(("after", module.VALUE, ok)),
    )
    try:
        assert _import_watch.is_watching("tpl-test")
        importlib.import_module(package)
    finally:
        _import_watch.unwatch("tpl-test")
    assert seen == ["before", ("after", 42, True)]
    assert not _import_watch.is_watching("tpl-test")
    assert type(sys.modules[package].__loader__).__name__ != "_WrappedLoader"  # the real loader stays


def test_a_refused_import_fails_before_the_module_exists_and_is_still_found(package):
    _import_watch.refuse("tpl-refuse", (package,), "is refused by this test")
    try:
        with pytest.raises(ImportError, match=f"^{package} is refused by this test$"):
            importlib.import_module(package)
        assert package not in sys.modules
        assert importlib.util.find_spec(package) is not None  # where it is installed is still known
    finally:
        _import_watch.unwatch("tpl-refuse")
    assert importlib.import_module(package).VALUE == 42
