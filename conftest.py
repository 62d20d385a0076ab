# Imported by pytest before any test module: the plugin must set up the environment before
# torch is imported (torch-npu without CANN breaks a plain ``import torch``).
import torchair_plugin  # noqa: F401

# Golden GE graph fixtures (also the package's pytest11 entry point once installed; pytest
# registers a plugin once per module name, so both may be active).
pytest_plugins = ["torchair_plugin.testing.pytest_plugin"]
