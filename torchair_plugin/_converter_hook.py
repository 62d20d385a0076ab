"""Registering the plugin's GE converter with torchair, whenever torchair gets imported.

Called once from :func:`torchair_plugin.registration.register` (the one place that decides what
gets registered). The decision, :func:`plan_converter`, is a pure function of four facts:

===========================================  ================================================
torchair imported, no native converter        register ours now
torchair imported, native converter, opt-out  keep the native one (``TORCHAIR_PLUGIN_NATIVE_CONVERTER=1``)
torchair imported, otherwise                  register ours now (replacing the native one)
torchair not imported but installed           defer: a ``sys.meta_path`` finder registers when it
                                              is imported (the plugin never imports it: 2-3 s)
torchair not installed                        nothing (no finder, no output, no cost)
===========================================  ================================================

"Registering" first imports torchair's own ``ge_converter.custom`` package. torchair imports it
lazily on the first converter lookup of a compile, and its modules register torchair's own
converters, so without this a converter registered before that moment would be silently
replaced (``register_fx_node_ge_converter`` stores the converter on the OpOverload; last wins).

torch-npu on an Ascend machine puts a lazy proxy in ``sys.modules["torchair"]`` whose real
package is imported as ``torch_npu.dynamo.torchair``: both names are watched, and a proxy that
has not loaded its package yet counts as "not imported" (:func:`torchair_plugin._upstream.torchair_package`).

Idempotent and thread-safe: everything runs under the process state's lock, and the converter is
registered at most once per process (a second ``register()`` or a reload finds the recorded
:class:`ConverterState` in :mod:`torchair_plugin._process_state`).
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import os
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from torchair_plugin import _import_watch, _upstream, environment, schema, variables
from torchair_plugin._process_state import STATE

NATIVE_CONVERTER_ENV = "TORCHAIR_PLUGIN_NATIVE_CONVERTER"
CONVERTER_PACKAGE = "torchair_plugin.converters"
CONVERTER_MODULE = CONVERTER_PACKAGE + ".npu_moe_update_expert"
# The top-level name, and the name torch_npu's lazy proxy imports the real package under.
WATCHED_NAMES = ("torchair", _upstream.TORCHAIR_REAL_NAME)


class ConverterStatus(enum.Enum):
    """Where the op's GE converter comes from now."""

    PLUGIN = "torchair_plugin"
    NATIVE_KEPT = "native"  # TORCHAIR_PLUGIN_NATIVE_CONVERTER=1 kept torchair's own
    PENDING = "pending"  # registers when torchair is imported
    UNAVAILABLE = "unavailable"  # torchair is not installed
    FAILED = "failed"  # registering raised; ConverterState.error says what


@dataclass(frozen=True)
class ConverterState:
    status: ConverterStatus
    error: str = ""  # FAILED: "<exception type>: <message>"

    def words(self) -> str:
        """As ``registration_report()["converter"]`` prints it."""
        return {
            ConverterStatus.PLUGIN: "torchair_plugin",
            ConverterStatus.NATIVE_KEPT: f"native (kept: {NATIVE_CONVERTER_ENV}=1)",
            ConverterStatus.PENDING: "pending: registers when torchair is imported",
            ConverterStatus.UNAVAILABLE: "unavailable: torchair not installed",
            ConverterStatus.FAILED: f"failed: {self.error}",
        }[self.status]


PLUGIN = ConverterState(ConverterStatus.PLUGIN)
NATIVE_KEPT = ConverterState(ConverterStatus.NATIVE_KEPT)
PENDING = ConverterState(ConverterStatus.PENDING)
UNAVAILABLE = ConverterState(ConverterStatus.UNAVAILABLE)


class Action(enum.Enum):
    REGISTER = "register"
    KEEP_NATIVE = "keep-native"
    DEFER = "defer"
    NOTHING = "nothing"


def keep_native_requested(environ: Mapping[str, str] = os.environ) -> bool:
    return variables.read_switch(NATIVE_CONVERTER_ENV, environ)


def plan_converter(
    *, torchair_imported: bool, torchair_importable: bool, native_present: bool, keep_native: bool
) -> Action:
    """What to do now. ``native_present`` is only known (and only read) once torchair is imported."""
    if torchair_imported:
        return Action.KEEP_NATIVE if (native_present and keep_native) else Action.REGISTER
    return Action.DEFER if torchair_importable else Action.NOTHING


# --- observing torchair without importing it ---------------------------------------------------


def torchair_importable() -> bool:
    """torchair ships inside torch-npu (top-level once ``torch_npu/dynamo`` is on sys.path)."""
    if environment.torch_npu_installed():
        return True
    try:
        return importlib.util.find_spec("torchair") is not None
    except (ImportError, ValueError):
        return False


# --- the converter module, installed or from a source checkout ---------------------------------


def converter_module() -> types.ModuleType:
    """``torchair_plugin.converters.npu_moe_update_expert`` (imports torchair).

    Installed (including ``pip install -e .``), setup.cfg's ``package_dir`` maps the top-level
    ``converters/`` folder to ``torchair_plugin.converters``. Run from a source checkout that is
    not installed (``PYTHONPATH=.``), nothing maps it: then the same folder is loaded under the
    same package name from its file location, so every caller sees one module either way.
    """
    try:
        return importlib.import_module(CONVERTER_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != CONVERTER_PACKAGE:
            raise
    package_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "converters")
    init = os.path.join(package_dir, "__init__.py")
    if not os.path.isfile(init):
        raise ModuleNotFoundError(
            f"{CONVERTER_PACKAGE} is not installed and {package_dir} does not exist", name=CONVERTER_PACKAGE
        )
    spec = importlib.util.spec_from_file_location(CONVERTER_PACKAGE, init, submodule_search_locations=[package_dir])
    assert spec is not None and spec.loader is not None  # a path to an existing file always has both
    package = importlib.util.module_from_spec(spec)
    sys.modules[CONVERTER_PACKAGE] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[CONVERTER_PACKAGE]
        raise
    sys.modules["torchair_plugin"].converters = package  # type: ignore[attr-defined]  # a subpackage set by hand
    return importlib.import_module(CONVERTER_MODULE)


# --- registering ----------------------------------------------------------------------------------


def state() -> ConverterState:
    """Where the op's GE converter comes from now (``registration_report()["converter"]`` in words)."""
    with STATE.lock:
        return STATE.converter if STATE.converter is not None else PENDING


def _op():
    import torch

    namespace, name = schema.QUALNAME.split("::")
    return getattr(getattr(torch.ops, namespace), name).default


def _import_torchair_custom_converters() -> None:
    # Its modules for ops this torch build lacks fail with AttributeError, which the package
    # turns into ~100 "Failed to import ..." warnings: noise here, so only those are silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_upstream.CUSTOM_CONVERTER_IMPORT_WARNING)
        importlib.import_module(_upstream.CUSTOM_CONVERTERS)


def _is_ours(converter: Any, ours: Any) -> bool:
    # torchair wraps a registered converter with functools.wraps (so __wrapped__ is ours).
    return converter is ours or getattr(converter, "__wrapped__", None) is ours


def _register_with(torchair: types.ModuleType, keep_native: bool) -> ConverterState:
    _import_torchair_custom_converters()
    op = _op()
    ours = converter_module().convert_npu_moe_update_expert
    # Read only to know whether a native converter is there to keep (no public lookup exists).
    current = _upstream.registered_converter(op)
    if current is not None and _is_ours(current, ours):
        return PLUGIN
    action = plan_converter(
        torchair_imported=True, torchair_importable=True, native_present=current is not None, keep_native=keep_native
    )
    if action is Action.KEEP_NATIVE:
        return NATIVE_KEPT
    torchair.register_fx_node_ge_converter(op)(ours)  # public torchair API
    return PLUGIN


def _on_torchair_imported(torchair: types.ModuleType) -> None:
    with STATE.lock:
        if STATE.converter != PENDING:
            return
        try:
            STATE.converter = _register_with(torchair, STATE.keep_native_converter)
        except Exception as exc:  # never break `import torchair`; say why instead
            STATE.converter = ConverterState(ConverterStatus.FAILED, f"{type(exc).__name__}: {exc}")
            warnings.warn(f"torchair_plugin could not register its GE converter: {exc}", RuntimeWarning, stacklevel=2)
        finally:
            _remove_finders()  # the status is final either way: nothing is left watching imports


_WATCH_TAG = "torchair"


def _after_torchair_exec(module: types.ModuleType, ok: bool) -> None:
    if ok:
        _on_torchair_imported(module)


def _remove_finders() -> None:
    _import_watch.unwatch(_WATCH_TAG)


def op_redefined() -> None:
    """The op's schema was redefined (the plugin's made way for torch_npu's): register again.

    The converter lives on the OpOverload object, and the old one is gone with the old schema.
    """
    with STATE.lock:
        if STATE.converter in (None, UNAVAILABLE):
            return
        torchair = _upstream.torchair_package()
        STATE.converter = PENDING
        if torchair is not None:
            _on_torchair_imported(torchair)
        else:
            _import_watch.watch(_WATCH_TAG, WATCHED_NAMES, after=_after_torchair_exec)


def install(keep_native: Optional[bool] = None) -> ConverterState:
    """Register now, or arrange to register when torchair is imported; return :func:`state`."""
    with STATE.lock:
        if STATE.converter is not None:
            return STATE.converter
        keep = keep_native_requested() if keep_native is None else keep_native
        STATE.keep_native_converter = keep
        torchair = _upstream.torchair_package()
        action = plan_converter(
            torchair_imported=torchair is not None,
            torchair_importable=torchair is not None or torchair_importable(),
            native_present=False,  # not read before torchair is imported
            keep_native=keep,
        )
        if action is Action.NOTHING:
            STATE.converter = UNAVAILABLE
        elif action is Action.DEFER:
            STATE.converter = PENDING
            _import_watch.watch(_WATCH_TAG, WATCHED_NAMES, after=_after_torchair_exec)
        else:
            assert torchair is not None  # INSTALL_NOW is planned only for an imported torchair
            STATE.converter = PENDING
            _on_torchair_imported(torchair)
        return STATE.converter
