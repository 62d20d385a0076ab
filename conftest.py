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
    from torchair_plugin.testing import CannLessUnavailable, import_torchair

    try:
        import_torchair()
    except CannLessUnavailable:
        pass  # the capture tests skip, each with the reason
