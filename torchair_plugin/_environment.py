"""Transitional: :mod:`torchair_plugin.environment` under its old private name, the same module
object. Only ``_cpu_kernel.py`` and its test still import it; delete this file with them."""

import sys

from torchair_plugin import environment

sys.modules[__name__] = environment
