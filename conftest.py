# Imported by pytest before any test module: the plugin must set up the environment before
# torch is imported (torch-npu without CANN breaks a plain ``import torch``).
import torchair_plugin  # noqa: F401
