"""pytest integration: golden GE graphs, and skips where capture cannot run.

Enable it with ``pytest_plugins = ["torchair_plugin.testing.pytest_plugin"]`` in a conftest.py
(it is not a ``pytest11`` entry point, which would load torch in every pytest run of the
environment). Nothing here imports torch or torchair until a fixture asks.

Fixtures
--------
``ge_torchair``
    The ``torchair`` module, importable for capture (:func:`import_torchair`). Skips the test,
    with the install command in the reason, where torch-npu, protobuf, a C compiler or binutils
    is missing. Any other failure is an error, not a skip. With ``pytest --ge-capture-strict``
    (or ``TORCHAIR_PLUGIN_CAPTURE_STRICT=1``) such a skip is a failure instead: for CI, where a
    broken image must not turn the graph guard off quietly.
``ge_golden``
    A :class:`GoldenFiles`; ``ge_golden.check(graph, "name")`` compares a captured graph's
    stable text (or any string) with ``goldens/name.txt`` next to the test file.

Rewriting goldens: the one switch is ``pytest --update-goldens`` (for CI scripts the
environment variable ``TORCHAIR_PLUGIN_UPDATE_GOLDENS=1`` sets the same switch). Checks then
write the files instead of comparing; review the diff with git before committing.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, List, Optional, Union

import pytest

from torchair_plugin import environment, variables

UPDATE_OPTION = "--update-goldens"
UPDATE_ENV = "TORCHAIR_PLUGIN_UPDATE_GOLDENS"
UPDATE_VERSION_OPTION = "--update-goldens-for-version"
STRICT_OPTION = "--ge-capture-strict"
STRICT_ENV = "TORCHAIR_PLUGIN_CAPTURE_STRICT"
GOLDEN_DIR = "goldens"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("torchair-plugin")
    group.addoption(
        UPDATE_OPTION,
        action="store_true",
        default=False,  # or the environment variable: read in pytest_configure, where a bad value is a usage error
        help=f"rewrite GE graph golden files instead of comparing (env {UPDATE_ENV}=1 does the same)",
    )
    group.addoption(
        UPDATE_VERSION_OPTION,
        action="store_true",
        default=False,
        help="write goldens for the installed torch-npu only (goldens/torch_npu-<version>/), where its graph "
        "differs from the shared golden; remove its copies that equal the shared one",
    )
    group.addoption(
        STRICT_OPTION,
        action="store_true",
        default=False,
        help=f"fail, instead of skipping, tests that need GE graph capture where it cannot run "
        f"(env {STRICT_ENV}=1 does the same)",
    )


# --ge-capture-strict of each configured session, innermost last: require_ge_capture() has no
# config to ask, and pytester runs sessions inside a session.
_strict_sessions: List[bool] = []


def pytest_configure(config: Any) -> None:
    try:
        variables.check_all()
    except variables.VariableError as error:
        raise pytest.UsageError(str(error)) from None
    if variables.read_switch(UPDATE_ENV):
        config.option.update_goldens = True
    _strict_sessions.append(_option(config, STRICT_OPTION))


def pytest_unconfigure(config: Any) -> None:
    if _strict_sessions:
        _strict_sessions.pop()


def strict() -> bool:
    """Whether "capture unavailable" fails tests rather than skipping them."""
    return bool(_strict_sessions and _strict_sessions[-1]) or variables.read_switch(STRICT_ENV)


# pytest-xdist: each worker sends the capture mode its tests ran under; the controller, which
# runs no test (and need not import torchair), prints theirs.
_WORKER_OUTPUT_KEY = "torchair_plugin_capture"
_workers_capture: List[str] = []


def pytest_sessionfinish(session: Any) -> None:
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        from torchair_plugin.testing import describe_capture

        output[_WORKER_OUTPUT_KEY] = describe_capture()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    described = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY)
    if described is not None and described not in _workers_capture:
        _workers_capture.append(described)


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    if _written and update_requested(config):
        terminalreporter.write_line(f"goldens: wrote or removed {len(_written)} file(s):")
        for path in _written:
            terminalreporter.write_line(f"  {path}")
    terminalreporter.write_line(_capture_line("; ".join(_workers_capture) or None))
    if config.getoption("verbose") > 0:
        for line in torch_npu_import_output().splitlines():
            terminalreporter.write_line(f"torch_npu said at import: {line}")


def torch_npu_import_output() -> str:
    """What torch_npu printed while this process imported it over the CANN stubs ('' if nothing)."""
    from torchair_plugin._process_state import STATE

    return STATE.torch_npu_import_output


def _capture_line(described: Optional[str] = None) -> str:
    """The summary's capture line: ``described`` (the xdist workers' modes), else this process's."""
    if described is None:
        from torchair_plugin.testing import describe_capture

        described = describe_capture()
    return f"torchair-plugin GE capture: {described}"


def pytest_report_header(config: Any) -> str:
    """Which torch_npu the session's GE captures run against (cheap: imports nothing)."""
    return _capture_line()


def require_ge_capture() -> Any:
    """Return torchair ready for capture, or skip the calling test/module saying what to install
    (fail instead under ``--ge-capture-strict`` / ``TORCHAIR_PLUGIN_CAPTURE_STRICT=1``).

    Usable at module level (``torchair = require_ge_capture()``) as well as inside a test.
    """
    from torchair_plugin.testing import CannLessUnavailable, import_torchair

    try:
        return import_torchair()
    except CannLessUnavailable as exc:
        if strict():
            pytest.fail(
                f"GE graph capture unavailable ({STRICT_OPTION} / {STRICT_ENV}=1 make this a failure, "
                f"not a skip): {exc}",
                pytrace=False,
            )
        pytest.skip(f"GE graph capture unavailable: {exc}", allow_module_level=True)


def require_aclgraph_capture(mode: str = "reduce-overhead") -> Any:
    """:func:`require_ge_capture` (strict switch included), then skip where ``mode``
    (``"reduce-overhead"`` or ``"npugraph_ex"``) cannot be captured with the installed torch-npu:
    it needs the real torch_npu loaded, and older torch-npu has no npugraph_ex. That skip is a
    fact of the version, not a broken image, so the strict switch leaves it a skip. Returns torchair."""
    torchair = require_ge_capture()
    from torchair_plugin.testing.aclgraph_capture import mode_problem

    problem = mode_problem(mode)
    if problem is not None:
        pytest.skip(f"{mode} graph capture unavailable: {problem}", allow_module_level=True)
    return torchair


class GoldenMismatch(AssertionError):
    """The captured text differs from the golden file; the message is a unified diff."""


def torch_npu_tag() -> str:
    """``torch_npu-<version>`` of the installed torch-npu: the folder of its own goldens."""
    return f"torch_npu-{environment.torch_npu_version() or 'none'}"


_written: List[Path] = []  # goldens written by this session (reported at its end)


class GoldenFiles:
    """Compare text with golden files under one directory, or rewrite them (update mode).

    A golden ``name`` is ``<directory>/name.txt``, unless the installed torch-npu has its own,
    ``<directory>/torch_npu-<version>/name.txt`` (for a version whose torchair really lowers
    the graph differently): then that one is compared, and rewritten in update mode.
    """

    def __init__(self, directory: Path, update: bool, tag: Optional[str] = None, for_version: bool = False) -> None:
        self.directory = Path(directory)
        self.update = update
        self.tag = tag or torch_npu_tag()
        self.for_version = for_version

    def path(self, name: str) -> Path:
        relative = Path(name if name.endswith(".txt") else f"{name}.txt")
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"golden name must be a relative path inside {self.directory}: {name!r}")
        own = self.directory / self.tag / relative
        return own if own.exists() else self.directory / relative

    def check(self, graph_or_text: Union[str, Any], name: str) -> None:
        """Assert ``graph_or_text`` (a CapturedGraph or a string) equals golden ``name``."""
        __tracebackhide__ = True  # a failure shows the diff, not this function's source
        text = graph_or_text if isinstance(graph_or_text, str) else graph_or_text.text
        path = self.path(name)
        if self.for_version:
            self._write_version_copy(text, name)
            return
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                _written.append(path)
            return
        if not path.exists():
            raise GoldenMismatch(f"golden file {path} does not exist; create it with `pytest {UPDATE_OPTION}`")
        expected = path.read_text(encoding="utf-8")
        if expected != text:
            diff = local_diff(expected, text, str(path), "captured")
            whose = (
                f"the golden of {self.tag}"
                if path.parent.name == self.tag
                else f"the shared golden ({self.tag} has none of its own under {self.directory / self.tag})"
            )
            raise GoldenMismatch(
                f"GE graph differs from {path}, {whose}. If the lowering changed on purpose, rewrite it with "
                f"`pytest {UPDATE_OPTION}`; if only this torch-npu lowers differently, copy the captured text "
                f"to {self.directory / self.tag / path.name}:\n{diff}"
            )

    def _write_version_copy(self, text: str, name: str) -> None:
        relative = self.path(name).relative_to(self.directory)
        if relative.parts[0] == self.tag:
            relative = Path(*relative.parts[1:])
        shared, own = self.directory / relative, self.directory / self.tag / relative
        if shared.exists() and shared.read_text(encoding="utf-8") == text:
            if own.exists():
                own.unlink()
                _written.append(own)
            return
        if not own.exists() or own.read_text(encoding="utf-8") != text:
            own.parent.mkdir(parents=True, exist_ok=True)
            own.write_text(text, encoding="utf-8")
            _written.append(own)


# An op's name in the text form, ``<Type>_<k>`` (op types are CamelCase): ``Cast_3``.
_OP_NAME = re.compile(r"\b([A-Z][A-Za-z0-9]*)_\d+\b")


def local_diff(expected: str, captured: str, fromfile: str, tofile: str, context: int = 3) -> str:
    """A unified diff of two text-form graphs that shows what changed, not what was renumbered.

    Ops are named ``<Type>_<k>`` by their place among ops of their type, so one Cast added
    renames every later Cast and every line that reads one. Lines are matched with op numbers
    blanked out; matched lines that differ only in their numbers are counted, not shown as
    changes (context lines show the captured text). Where nothing but numbers differs (ops of
    one type reordered), the plain diff is returned.
    """
    old, new = expected.splitlines(), captured.splitlines()
    matcher = difflib.SequenceMatcher(
        None,
        [_OP_NAME.sub(r"\1_#", line) for line in old],
        [_OP_NAME.sub(r"\1_#", line) for line in new],
        autojunk=False,
    )
    # Counted first: get_grouped_opcodes trims the matcher's cached opcodes in place.
    renumbered = sum(
        a != b
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag == "equal"
        for a, b in zip(old[i1:i2], new[j1:j2])
    )
    hunks = []
    for group in matcher.get_grouped_opcodes(context):
        first, last = group[0], group[-1]
        hunks.append(f"@@ -{first[1] + 1},{last[2] - first[1]} +{first[3] + 1},{last[4] - first[3]} @@")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                hunks += [" " + line for line in new[j1:j2]]
            else:
                hunks += ["-" + line for line in old[i1:i2]] + ["+" + line for line in new[j1:j2]]
    if not hunks:
        return "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True), captured.splitlines(keepends=True), fromfile=fromfile, tofile=tofile
            )
        )
    note = (
        f"({renumbered} more line(s) differ only in op numbers <Type>_<k>: an op added or removed renumbers "
        f"the later ops of its type)\n"
        if renumbered
        else ""
    )
    return f"--- {fromfile}\n+++ {tofile}\n" + note + "\n".join(hunks) + "\n"


def _option(config: Any, option: str) -> bool:
    return bool(config.getoption(option.lstrip("-").replace("-", "_"), default=False))


def update_requested(config: Any) -> bool:
    return _option(config, UPDATE_OPTION) or _option(config, UPDATE_VERSION_OPTION)


@pytest.fixture
def ge_torchair() -> Any:
    return require_ge_capture()


@pytest.fixture
def ge_golden(request: Any) -> GoldenFiles:
    directory = Path(request.path).parent / GOLDEN_DIR
    return GoldenFiles(
        directory, _option(request.config, UPDATE_OPTION), for_version=_option(request.config, UPDATE_VERSION_OPTION)
    )
