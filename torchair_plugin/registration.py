"""Deciding what to install for npu_moe_update_expert, given what is already there, and doing it.

This is the only module that registers anything with torch. ``import torchair_plugin`` calls
:func:`register` once; it is idempotent (a second call, a reload of the package or of this module,
two threads at once: all return the same :class:`Registration`, kept with its lock in
:mod:`torchair_plugin._process_state`) and atomic (every torch registration goes through one
``torch.library.Library``; if any step fails the library is destroyed, which removes all of them
and restores whatever was there before). Every Library the plugin holds, the companion ops' too,
comes from :func:`new_library`, and every "does the op exist" question goes to :func:`op_exists`.
Tests apply plans to ops of their own namespaces with :func:`apply_plan`.

The decision (:func:`plan_registration`) is a pure function of the observed :class:`OpState` and
the user's :class:`Options`, so every combination is tested without an NPU:

==============================  ===========================================================
op absent (no torch_npu, or a   define the schema; reference kernels for CPU and CUDA (and
torch_npu without the op)       PrivateUse1 when torch_npu is loaded); the validating fake
op native, with a meta          keep every native device kernel; replace the unchecked meta by
                                the validating fake, unless ``TORCHAIR_PLUGIN_NATIVE_FAKE=1``;
                                reference kernels only for devices with no kernel at all
op native, without a meta       as above, and the validating fake is installed (no opt-out:
                                there is nothing native to keep)
==============================  ===========================================================

The GE converter is registered with torchair independently of the above, by
``torchair_plugin._converter_hook.install`` called from :func:`register`: torchair imported,
importable or absent decides whether that happens now, when torchair is imported, or never;
``TORCHAIR_PLUGIN_NATIVE_CONVERTER=1`` keeps torchair's own converter where there is one.
"""

from __future__ import annotations

import enum
import inspect
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Optional, Tuple

import torch

from torchair_plugin import _converter_hook, _import_watch, environment, schema, variables
from torchair_plugin._converter_hook import ConverterState, ConverterStatus  # noqa: F401  (public here)
from torchair_plugin._process_state import STATE as _state
from torchair_plugin.fake import npu_moe_update_expert_fake
from torchair_plugin.reference import npu_moe_update_expert_reference

NATIVE_FAKE_ENV = "TORCHAIR_PLUGIN_NATIVE_FAKE"
DEVICE_KEYS = ("CPU", "CUDA")
NPU_KEY = "PrivateUse1"
# A kernel registered under one of these already serves every device: adding ours would shadow it.
_COMPOSITE_KEYS = ("CompositeExplicitAutograd", "CompositeImplicitAutograd")


@dataclass(frozen=True)
class OpState:
    """What the dispatcher holds for the op before the plugin touches it."""

    schema_exists: bool
    kernel_keys: FrozenSet[str] = frozenset()  # dispatch keys with a kernel (Meta included)
    torch_npu_loaded: bool = False


@dataclass(frozen=True)
class Options:
    keep_native_fake: bool = False
    keep_native_converter: bool = False  # TORCHAIR_PLUGIN_NATIVE_CONVERTER=1

    @classmethod
    def from_environ(cls, environ=os.environ) -> "Options":
        return cls(
            keep_native_fake=variables.read_switch(NATIVE_FAKE_ENV, environ),
            keep_native_converter=_converter_hook.keep_native_requested(environ),
        )


@dataclass(frozen=True)
class Plan:
    define_schema: bool
    install_fake: bool
    reference_keys: Tuple[str, ...]


def plan_registration(state: OpState, options: Options) -> Plan:
    """What to install. Never replaces a native device kernel; see the module docstring."""
    devices = DEVICE_KEYS + ((NPU_KEY,) if state.torch_npu_loaded else ())
    if not state.schema_exists:
        return Plan(define_schema=True, install_fake=True, reference_keys=devices)
    served_everywhere = any(key in state.kernel_keys for key in _COMPOSITE_KEYS)
    missing = () if served_everywhere else tuple(key for key in devices if key not in state.kernel_keys)
    has_native_meta = "Meta" in state.kernel_keys
    return Plan(
        define_schema=False,
        install_fake=not (has_native_meta and options.keep_native_fake),
        reference_keys=missing,
    )


# --- what the dispatcher holds, and the Libraries the plugin holds ------------------------------
# Both questions go through torch.ops' public surface: an op that does not exist is an
# AttributeError of its namespace (nothing is cached then), and OpOverload answers which keys
# have a kernel. Every caller asks here.


def _packet(qualname: str):
    namespace, name = qualname.split("::")
    return getattr(getattr(torch.ops, namespace), name, None)


def op_exists(qualname: str) -> bool:
    return _packet(qualname) is not None


def has_kernel(qualname: str, key: str) -> bool:
    packet = _packet(qualname)
    return packet is not None and bool(packet.default.has_kernel_for_dispatch_key(key))


def new_library(namespace: str) -> torch.library.Library:
    """A ``FRAGMENT`` Library of ``namespace``, held for the process until :func:`release_library`.

    Every Library the plugin registers through comes from here (the op's, the companion ops')."""
    library = torch.library.Library(namespace, "FRAGMENT")
    with _state.lock:
        _state.libraries.append(library)
    return library


def release_library(library: torch.library.Library) -> None:
    """Remove everything registered through ``library`` (what it shadowed comes back)."""
    with _state.lock:
        if library in _state.libraries:
            _state.libraries.remove(library)
            library._destroy()


def probe_op_state(qualname: str = schema.QUALNAME) -> OpState:
    torch_npu_loaded = "torch_npu" in sys.modules
    if not op_exists(qualname):
        return OpState(schema_exists=False, torch_npu_loaded=torch_npu_loaded)
    keys = frozenset(key for key in ("CPU", "CUDA", NPU_KEY, "Meta") + _COMPOSITE_KEYS if has_kernel(qualname, key))
    return OpState(schema_exists=True, kernel_keys=keys, torch_npu_loaded=torch_npu_loaded)


@dataclass
class Registration:
    """Where each piece of the op comes from after registration; the CLI prints it."""

    qualname: str
    state: OpState
    plan: Plan
    library: Optional[torch.library.Library] = field(repr=False, default=None)
    options: Options = field(repr=False, default_factory=Options)

    def pieces(self) -> "Pieces":
        """Where each piece comes from, as data (:meth:`sources` is the same in words)."""
        kernels = {}
        for key in DEVICE_KEYS + (NPU_KEY,):
            if key in self.plan.reference_keys:
                kernels[key] = Source.PLUGIN
            elif key in self.state.kernel_keys:
                kernels[key] = Source.NATIVE
            elif any(k in self.state.kernel_keys for k in _COMPOSITE_KEYS):
                kernels[key] = Source.NATIVE_COMPOSITE
            else:
                kernels[key] = Source.ABSENT
        return Pieces(
            schema=Source.PLUGIN if self.plan.define_schema else Source.NATIVE,
            fake=Source.PLUGIN if self.plan.install_fake else Source.NATIVE,
            kernels=kernels,
            # Live: pending becomes the plugin's once torchair is imported.
            converter=converter_state() if self.qualname == schema.QUALNAME else None,
        )

    def sources(self) -> Dict[str, object]:
        """``registration_report()``: :meth:`pieces` in the words the CLI prints."""
        pieces = self.pieces()
        kernel_words = {
            Source.PLUGIN: "torchair_plugin (reference kernel)",
            Source.NATIVE: "native",
            Source.NATIVE_COMPOSITE: "native (composite)",
            Source.ABSENT: "absent",
        }
        fake_words = {
            Source.PLUGIN: "torchair_plugin (validating fake kernel)",
            Source.NATIVE: f"native (kept: {NATIVE_FAKE_ENV}=1)",
        }
        return {
            "op": self.qualname,
            "schema": pieces.schema.value,
            "fake": fake_words[pieces.fake],
            "kernels": {key: kernel_words[source] for key, source in pieces.kernels.items()},
            "converter": pieces.converter.words() if pieces.converter is not None else Source.ABSENT.value,
        }


class Source(enum.Enum):
    PLUGIN = "torchair_plugin"
    NATIVE = "native"
    NATIVE_COMPOSITE = "native (composite)"  # a composite kernel serves the key
    ABSENT = "absent"


@dataclass(frozen=True)
class Pieces:
    schema: Source
    fake: Source
    kernels: Dict[str, Source]  # per dispatch key: CPU, CUDA, PrivateUse1
    converter: Optional[ConverterState]  # None for an op that is not the plugin's (tests' namespaces)


def converter_state() -> ConverterState:
    """Where the op's GE converter comes from now; ``.status`` is a :class:`ConverterStatus`."""
    return _converter_hook.state()


# How the fake kernel is installed. torch_npu registers its unchecked meta as a Python ``Meta``
# kernel. ``register_fake`` shadows it only on torch whose register_fake takes ``allow_override``
# (torch >= 2.8; it must be given True). Older torch refuses both routes through its Python API
# (register_fake: "already has a Meta implementation"; Library.impl: "already a kernel registered
# from python"), although the dispatcher itself allows a second kernel for a key (the newest wins,
# and removing it brings the previous one back): there the fake goes to the dispatcher directly,
# as a Meta kernel (FakeTensorMode runs Meta kernels of ops that have no registered fake).
FAKE_ROUTE_REGISTER_FAKE = "register_fake"
FAKE_ROUTE_META_KERNEL = "meta_kernel"
DEFAULT_FAKE_ROUTE = (
    FAKE_ROUTE_REGISTER_FAKE
    if "allow_override" in inspect.signature(torch.library.register_fake).parameters
    else FAKE_ROUTE_META_KERNEL
)


def _install_meta_kernel(library: torch.library.Library, name: str, kernel) -> None:
    # torch internal: Library.m is the C++ library object behind Library.impl, which adds only
    # the Python-side bookkeeping that refuses the override. The dispatcher warns that a kernel
    # is overridden: that is the intent here, so only that warning is silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel.*")
        library.m.impl(name, "Meta", kernel, False)  # type: ignore[union-attr]  # set by Library.__init__


def apply_plan(
    plan: Plan, qualname: str = schema.QUALNAME, fake_route: str = DEFAULT_FAKE_ROUTE
) -> torch.library.Library:
    """Install ``plan`` through one Library; on any failure remove everything it added."""
    namespace, name = qualname.split("::")
    library = new_library(namespace)
    try:
        if plan.define_schema:
            library.define(name + schema.SCHEMA)
        for key in plan.reference_keys:
            library.impl(name, npu_moe_update_expert_reference, key)
        # Either fake route shadows a native meta without removing it: destroying the library
        # brings it back.
        if plan.install_fake and fake_route == FAKE_ROUTE_REGISTER_FAKE:
            torch.library.register_fake(qualname, npu_moe_update_expert_fake, lib=library, allow_override=True)
        elif plan.install_fake:
            _install_meta_kernel(library, name, npu_moe_update_expert_fake)
    except Exception:
        release_library(library)
        raise
    return library


def current_registration() -> Optional[Registration]:
    """The registration in force, or None (before :func:`register`, after :func:`unregister`)."""
    return _state.registration


def _import_native_op_provider() -> None:
    """On an Ascend machine, let torch_npu register its op before the plugin looks.

    With CANN present, ``import torch`` normally auto-loads torch_npu already; if the user turned
    autoload off, importing it here keeps the order right (a later ``import torch_npu`` would
    otherwise find the schema defined by the plugin and fail).
    """
    if "torch_npu" in sys.modules or not environment.torch_npu_installed():
        return
    if environment.cann_home() is None:
        return
    try:
        with environment.forgotten_if_failed("torch_npu"):
            import torch_npu  # noqa: F401
    except Exception:  # a broken torch_npu install: proceed as without it, doctor reports it
        pass


def register(options: Optional[Options] = None) -> Registration:
    """Install the op's pieces once per process and return where each came from."""
    with _state.lock:
        if _state.registration is not None:
            return _state.registration
        _import_native_op_provider()
        return _register_now(options or Options.from_environ())


def first_seen_state() -> Optional[OpState]:
    """The op as torch_npu provided it (no plugin piece in it), last time the plugin looked."""
    return _state.native_state


def _register_now(options: Options, torch_npu_failed: bool = False) -> Registration:
    state = probe_op_state()
    _state.native_state = state
    if torch_npu_failed:
        # Python drops a module whose import failed only after its loader returns, i.e. after
        # the watcher's callback that runs this: it is in sys.modules, but not loaded.
        state = OpState(state.schema_exists, state.kernel_keys, torch_npu_loaded=False)
    plan = plan_registration(state, options)
    library = apply_plan(plan)
    registration = Registration(schema.QUALNAME, state, plan, library, options)
    _state.registration = registration
    if plan.define_schema and not state.torch_npu_loaded and environment.torch_npu_installed():
        _import_watch.watch(
            _TORCH_NPU_WATCH_TAG, ("torch_npu",), before=_make_way_for_torch_npu, after=_register_after_torch_npu
        )
    # After the op exists (the converter is registered on its OpOverload).
    _converter_hook.install(options.keep_native_converter)
    return registration


# --- torch_npu imported after the plugin -------------------------------------------------------
# torch_npu's C++ library defines the op's schema when it loads; a schema the plugin defined
# first makes that registration fail with C++ ``terminate`` (no exception, a dead process). So
# when the plugin defined the schema, ``import torch_npu`` is watched: just before torch_npu
# executes, everything the plugin registered is removed; just after (whether the import worked
# or not), the registration is planned again from what is there now: the native schema and NPU
# kernel, or, if torch_npu failed to load, the plugin's own schema again.
_TORCH_NPU_WATCH_TAG = "torch_npu"


def _remove_registration() -> Optional[Registration]:
    registration, _state.registration = _state.registration, None
    if registration is not None and registration.library is not None:
        release_library(registration.library)
    return registration


# The dispatcher frees an operator's entry when its last registration goes, and every
# ``torch.ops.npu.npu_moe_update_expert.default`` a user saved points at that entry: called after
# torch_npu defined the op anew, it read freed memory (std::bad_alloc, or worse). So while the
# schema is away, one kernel for a dispatch key no tensor here carries keeps the entry; torch_npu's
# schema lands on it, and saved handles keep working.
_KEEPALIVE_KEY = "FPGA"


def _unreachable_kernel(*args, **kwargs):
    raise RuntimeError(f"{schema.OP_NAME}: the plugin's placeholder kernel for {_KEEPALIVE_KEY} tensors ran")


def _hold_operator_entry() -> None:
    namespace, name = schema.QUALNAME.split("::")
    library = new_library(namespace)
    library.impl(name, _unreachable_kernel, _KEEPALIVE_KEY)
    _state.operator_keepalive = library


def _release_operator_entry() -> None:
    library, _state.operator_keepalive = _state.operator_keepalive, None
    if library is not None:
        release_library(library)


def _make_way_for_torch_npu() -> None:
    with _state.lock:
        _import_watch.unwatch(_TORCH_NPU_WATCH_TAG)
        if _state.registration is not None:
            _hold_operator_entry()
        registration = _remove_registration()
        if registration is not None:
            _state.yielded_options = registration.options


def _register_after_torch_npu(module, ok: bool) -> None:
    with _state.lock:
        try:
            _register_again(ok)
        finally:
            _release_operator_entry()  # torch_npu's schema, or the plugin's again, holds it now


def _register_again(ok: bool) -> None:
    options, _state.yielded_options = _state.yielded_options, None
    if options is None or _state.registration is not None:
        return
    try:
        _register_now(options, torch_npu_failed=not ok)
    except Exception as exc:  # never turn `import torch_npu` into a failure of the plugin's
        warnings.warn(
            f"torchair_plugin could not register {schema.QUALNAME} after torch_npu was imported "
            f"({type(exc).__name__}: {exc}); torch_npu's own registration is in use. "
            f"Set {NATIVE_FAKE_ENV}=1 to keep torch_npu's meta kernel without this attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    _converter_hook.op_redefined()


def unregister() -> None:
    """Remove everything :func:`register` added (native pieces come back). Mostly for tests."""
    with _state.lock:
        _import_watch.unwatch(_TORCH_NPU_WATCH_TAG)
        _remove_registration()
