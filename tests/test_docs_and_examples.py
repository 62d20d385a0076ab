"""Every ```python block in README.md and docs/*.md runs, and every example script runs.

Blocks and scripts that need an Ascend NPU say so with a line ``# requires: npu`` (a block's
first line; a script's first lines): they are byte-compiled, and scripts are also imported
(without running ``main``), which catches import errors and anything that would reach for
torch_npu at import time. Blocks of one document share a namespace, top to bottom, like a reader
typing them in order. ``eplb_distributed.py`` is run by tests/test_eplb_example.py and
``eplb_loop.py`` by tests/test_eplb_loop_example.py, both under torchrun.
"""

import importlib.util
import linecache
import os
import pathlib
import re
import subprocess
import sys

import pytest
from capture_here import aclgraph_capture_possible, capture_possible

from torchair_plugin import environment

ROOT = pathlib.Path(__file__).resolve().parents[1]
NPU_MARKER = "# requires: npu"
DOCUMENTS = sorted(ROOT.glob("docs/*.md")) + [ROOT / "README.md"]
TORCHRUN_EXAMPLES = ("eplb_distributed.py", "eplb_loop.py")
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if p.name not in TORCHRUN_EXAMPLES)
# The template tests (examples/test_*.py) a user copies into a project, run by pytest as a user runs
# them; the scripts, by python.
TEMPLATES = [p for p in EXAMPLES if p.name.startswith("test_")]
SCRIPTS = [p for p in EXAMPLES if p not in TEMPLATES]
# Lines an example must print, worked out by hand from docs/op.md (the example's closing comment
# walks through them): a script that runs but prints something else fails.
_KEPT = "kept [[True, True, True], [True, True, False], [False, False, False]]"
EXPECTED_LINES = {
    "eager_cpu.py": [
        f"balance_mode 0: physical ids [[4, 6, 1], [6, 4, 7], [2, 4, 5]], {_KEPT}",
        f"balance_mode 1: physical ids [[0, 3, 1], [6, 4, 7], [2, 0, 5]], {_KEPT}",
    ],
}
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path):
    """(first line number, source) of each ```python block."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def needs_npu(source: str, lines: int = 1) -> bool:
    return any(line.strip() == NPU_MARKER for line in source.splitlines()[:lines])


def _relative(path):
    return str(path.relative_to(ROOT))


def test_there_is_something_to_run():
    assert (ROOT / "README.md").exists() and len(DOCUMENTS) >= 4
    assert all(python_blocks(doc) for doc in DOCUMENTS if doc.name in ("op.md", "eplb.md", "graph-mode.md"))
    assert {p.name for p in EXAMPLES} >= {"eager_cpu.py", "graph_mode_ascend.py"}
    assert set(EXPECTED_LINES) <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("document", DOCUMENTS, ids=_relative)
def test_document_code_blocks(document):
    namespace = {"__name__": "__doc_block__"}
    for line, source in python_blocks(document):
        # Blank lines in front keep tracebacks' line numbers equal to the document's. The name is
        # not the document's path: Dynamo (torch 2.6) reads a code object's file to find its source
        # and tokenizes it as Python; linecache holds the block under the synthetic name instead.
        filename = f"<{_relative(document)}:{line}>"
        padded = "\n" * (line - 1) + source
        linecache.cache[filename] = (len(padded), None, padded.splitlines(keepends=True), filename)
        code = compile(padded, filename, "exec")
        if needs_npu(source):
            continue  # byte-compiled above: that is all an NPU block gets here
        exec(code, namespace)


def _child_env():
    """The environment a user has: nothing exported by hand (the conftest's autoload setting is
    taken out again), so an example that imports torch before torchair_plugin fails here."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("TORCH_DEVICE_BACKEND_AUTOLOAD", None)
    return env


@pytest.mark.parametrize("script", SCRIPTS, ids=_relative)
def test_example(script):
    source = script.read_text()
    compile(source, _relative(script), "exec")
    npu = needs_npu(source, lines=5)
    if npu:
        spec = importlib.util.spec_from_file_location(f"example_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # guarded by __main__: defines, does not run
        assert callable(module.main)
        if environment.cann_home() is not None:
            pytest.skip("an NPU example on an Ascend machine is launched with torchrun, not here")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=_child_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    missing = [line for line in EXPECTED_LINES.get(script.name, []) if line not in done.stdout.splitlines()]
    assert not missing, f"{script.name} did not print {missing}:\n{done.stdout[-2000:]}"
    if npu:
        assert "needs an Ascend NPU" in done.stdout  # off-NPU it says why it did not run
        if script.name == "graph_mode_ascend.py" and capture_possible():
            assert "MoeUpdateExpert" in done.stdout  # and shows the graph it would have run


def test_template_tests():
    """The templates pass where their capture runs here, and skip saying why where it cannot (an
    aclgraph template on a torch-npu whose real torch_npu does not load). One pytest process runs
    them all, finding the golden-graph fixtures through the repository's conftest.py: each would
    otherwise pay pytest's and torchair's start-up again."""
    assert TEMPLATES
    for script in TEMPLATES:
        compile(script.read_text(), _relative(script), "exec")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-v", *map(_relative, TEMPLATES)],
        cwd=ROOT,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = (done.stdout + done.stderr)[-3000:]
    assert done.returncode in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), output
    for script in TEMPLATES:
        name = _relative(script)
        possible = _capture_possible_for(script)
        outcomes = re.findall(rf"^{re.escape(name)}::\S+ (\w+)", done.stdout, re.MULTILINE)
        if possible:
            assert outcomes and set(outcomes) == {"PASSED"}, f"{name}:\n{output}"
        else:
            # A module-level skip is collected, not run: pytest's summary names the line that
            # skipped (the plugin's), so the file shows up only as having run nothing.
            assert not outcomes, f"{name} should skip, saying why:\n{output}"
    impossible = [script for script in TEMPLATES if not _capture_possible_for(script)]
    reasons = [
        line for line in done.stdout.splitlines() if line.startswith("SKIPPED") and "capture unavailable" in line
    ]
    assert len(reasons) == len(impossible), output


def _capture_possible_for(template):
    return aclgraph_capture_possible() if template.stem.endswith("_aclgraph") else capture_possible()
