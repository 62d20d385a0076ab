"""pytest integration: golden GE graphs, and skips where capture cannot run.

Enable it with ``pytest_plugins = ["torchair_plugin.testing.pytest_plugin"]`` in a conftest.py
(it is not a ``pytest11`` entry point, which would load torch in every pytest run of the
environment). Nothing here imports torch or torchair until a fixture asks.

Fixtures
--------
``ge_torchair``
    The ``torchair`` module, importable for capture (:func:`import_torchair`). Skips the test,
    with the install command in the reason, where torch-npu, protobuf, a C compiler or binutils
    is missing. Any other failure is an error, not a skip.
``ge_golden``
    A :class:`GoldenFiles`; ``ge_golden.check(graph, "name")`` compares a captured graph's
    stable text (or any string) with ``goldens/name.txt`` next to the test file.

Rewriting goldens: the one switch is ``pytest --update-goldens`` (for CI scripts the
environment variable ``TORCHAIR_PLUGIN_UPDATE_GOLDENS=1`` sets the same switch). Checks then
write the files instead of comparing; review the diff with git before committing.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Optional, Union

import pytest

from torchair_plugin import _environment

UPDATE_OPTION = "--update-goldens"
UPDATE_ENV = "TORCHAIR_PLUGIN_UPDATE_GOLDENS"
GOLDEN_DIR = "goldens"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("torchair-plugin")
    group.addoption(
        UPDATE_OPTION,
        action="store_true",
        default=_environment.flag_set(os.environ, UPDATE_ENV),
        help=f"rewrite GE graph golden files instead of comparing (env {UPDATE_ENV}=1 does the same)",
    )


def require_ge_capture() -> Any:
    """Return torchair ready for capture, or skip the calling test/module saying what to install.

    Usable at module level (``torchair = require_ge_capture()``) as well as inside a test.
    """
    from torchair_plugin.testing import CannLessUnavailable, import_torchair

    try:
        return import_torchair()
    except CannLessUnavailable as exc:
        pytest.skip(f"GE graph capture unavailable: {exc}", allow_module_level=True)


class GoldenMismatch(AssertionError):
    """The captured text differs from the golden file; the message is a unified diff."""


class GoldenFiles:
    """Compare text with golden files under one directory, or rewrite them (update mode)."""

    def __init__(self, directory: Path, update: bool) -> None:
        self.directory = Path(directory)
        self.update = update

    def path(self, name: str) -> Path:
        relative = Path(name if name.endswith(".txt") else f"{name}.txt")
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"golden name must be a relative path inside {self.directory}: {name!r}")
        return self.directory / relative

    def check(self, graph_or_text: Union[str, Any], name: str) -> None:
        """Assert ``graph_or_text`` (a CapturedGraph or a string) equals golden ``name``."""
        text = graph_or_text if isinstance(graph_or_text, str) else graph_or_text.text
        path = self.path(name)
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
            return
        if not path.exists():
            raise GoldenMismatch(f"golden file {path} does not exist; create it with `pytest {UPDATE_OPTION}`")
        expected = path.read_text(encoding="utf-8")
        if expected != text:
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    fromfile=str(path),
                    tofile="captured",
                )
            )
            raise GoldenMismatch(f"GE graph differs from {path} (rewrite with `pytest {UPDATE_OPTION}`):\n{diff}")


def update_requested(config: Any) -> bool:
    return bool(config.getoption(UPDATE_OPTION.lstrip("-").replace("-", "_"), default=False))


@pytest.fixture
def ge_torchair() -> Any:
    return require_ge_capture()


@pytest.fixture
def ge_golden(request: Any) -> GoldenFiles:
    directory: Optional[Path] = Path(request.path).parent / GOLDEN_DIR
    return GoldenFiles(directory, update_requested(request.config))
