import os

# Inductor's pool of compile worker processes costs more than it saves for the suite's few small
# graphs on a 2-core machine (a cold inductor test: 20 s with the pool, 15 s without).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# On its first CPU compile in a process inductor builds a test program for every vector ISA the
# CPU reports (9 s of a cold 12.6 s first compile here; 5.6 s without). The suite checks what the
# graphs compute, not vector code: scalar C++ is still inductor's real codegen and compile. Set by
# the suite for itself and the processes it starts, never by the package.
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "0")

# Imported by pytest before any test module: the plugin must set up the environment before
# torch is imported (torch-npu without CANN breaks a plain ``import torch``).
import torchair_plugin  # noqa: F401

# Golden GE graph fixtures. Deliberately not a pytest11 entry point: that would import torch
# (through torchair_plugin) in every pytest run of every project in the environment. Users opt
# in the same way, with this line in their conftest.py.
pytest_plugins = ["torchair_plugin.testing.pytest_plugin"]


def pytest_configure(config):
    # One torch_npu for the whole session: the Ascend side of the suite runs against the real
    # torch_npu (over CANN stubs) from the first test on, not from whichever test captures first.
    # pytest-xdist's controller runs no test: importing there would delay every worker's start by
    # the import (several seconds of the suite's time); --compat-report imports it at the end.
    if not _is_xdist_controller(config):
        _import_torchair()


def _is_xdist_controller(config):
    return not hasattr(config, "workerinput") and bool(config.getoption("numprocesses", None))


def _import_torchair():
    from torchair_plugin.testing import CannLessUnavailable, import_torchair

    try:
        import_torchair()
    except CannLessUnavailable:
        pass  # the capture tests skip, each with the reason


# --- the compatibility report (noxfile.py's matrix writes docs/compatibility.md from it) ---------


def pytest_addoption(parser):
    parser.addoption(
        "--compat-report", default=None, help="write what this torch-npu provides and the test counts as JSON"
    )


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("--compat-report")
    if not path or hasattr(session.config, "workerinput"):
        return  # pytest-xdist: the controller, which holds every worker's counts, writes it
    import json

    import torch

    _import_torchair()  # as every worker did (a no-op where pytest_configure did it)

    from torchair_plugin import environment, registration
    from torchair_plugin.testing import describe_capture

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    counts = {k: len(reporter.stats.get(k, [])) for k in ("passed", "failed", "skipped", "error")} if reporter else {}
    first = registration.first_seen_state()
    facts = {
        "torch": torch.__version__,
        "native_op": first.schema_exists if first else None,
        "native_meta": ("Meta" in first.kernel_keys) if first else None,
        # torchair's converter for the op ships with the op (its file is what environment reads)
        "native_converter": environment.torch_npu_has_op(),
        "registration": registration.register().sources(),
        "capture": describe_capture(),
        "aclgraph_modes": _aclgraph_modes(),
        "tests": counts,
        "exit_status": int(exitstatus),
        "torch_npu_version": environment.torch_npu_version(),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(facts, f)


def _aclgraph_modes():
    """The aclgraph modes (reduce-overhead, npugraph_ex) this torch-npu captures here."""
    from torchair_plugin.testing import CannLessUnavailable, available_aclgraph_modes

    try:
        return available_aclgraph_modes()
    except CannLessUnavailable:
        return []
