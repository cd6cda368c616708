"""The method registry: one :class:`Method` record per method, each declared in its own module of this package.

A method module (``accel/methods/<name>.py``) holds the method's settings dataclass, its per-model defaults, the
builders of its sparse self-attention or chunk cache, and its record ``METHOD``; the algorithm itself lives in
:mod:`accel.attention` / :mod:`accel.cache`, imported when a builder runs. The registry finds the records by
importing every module of this package (registry order: ``Method.order``), so adding a method is one new module
here (see the method contract in ``docs/architecture.md``). The runner, the CLI (``--method`` choices and flags),
the app (method radio and widgets), calibration (:func:`calibratable`), threshold tables and the benchmarks
(:func:`variants`) all read this table.

Nothing here imports torch; the implementations import :mod:`accel.target` and :mod:`accel.settings`, never this
package, so there is no import cycle between the registry and the code it names.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from accel.errors import ConfigError
from accel.schema import Event
from accel.settings import MethodSettings
from accel.target import Installer

if TYPE_CHECKING:
    from accel.attention.base import AttentionMethod
    from accel.cache.chunked import GroupCache
    from accel.config import RunConfig
    from accel.models import ModelSpec
    from accel.telemetry import Recorder

# Wan2.1 text-to-video; SkyReels-V2 diffusion forcing (chunked, autoregressive)
FAMILY_NAMES = {"wan": "Wan2.1", "skyreels": "SkyReels-V2 diffusion-forcing"}
FAMILIES = tuple(FAMILY_NAMES)

# the telemetry events of a kind of method (Method.events; accel.schema.Event, which the viz figures read)
CHUNKED = frozenset({Event.CHUNK_COMPUTE, Event.TOKENS_UPDATED, Event.CHUNK_DONE, Event.KV_TOKENS})
SPARSE = frozenset({Event.DENSITY, Event.DENSE_WARMUP, Event.DENSE_HEAD, Event.MASK_PREDICT})
TMR = frozenset({Event.REUSE_CHECK, Event.DRIFT, Event.MASK_REFRESH})
BALANCE = frozenset({Event.REBALANCE})  # an attention method under --parallel with a balanced head assignment
CACHE = CHUNKED | SPARSE | TMR | {Event.CHUNK_REUSE, Event.KV_COMPRESS}  # a cache may compose sparse attention

AttentionBuilder = Callable[[MethodSettings, "ModelSpec", "Recorder | None", int], "AttentionMethod"]
CacheBuilder = Callable[[MethodSettings, "ModelSpec"], "GroupCache"]
Variants = Callable[["ModelSpec"], dict[str, dict[str, Any]]]  # benchmark variant name -> settings


def _no_parallel(settings: MethodSettings) -> str | None:
    return "it has no context-parallel support"


def _no_defaults(spec: ModelSpec) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Method:
    """One acceleration method (or the dense reference).

    ``install`` is a context manager over a :class:`accel.target.Target` yielding the function that produces the
    video; ``attention`` builds its sparse self-attention (None: diffusers' own), ``cache`` its chunk cache in
    chunked runs (None: every group step computes); ``model_defaults`` gives the values its "empty = the model's"
    settings take on a model, ``defaults_note`` one line of them for the app; ``parallel`` says why the settings
    cannot run under ``--parallel`` (None: they can); ``order`` places it in every list (CLI, app, benchmarks);
    ``refuses`` says why some settings cannot run on a model of a family the method runs on (None: they can).
    """

    name: str
    settings: type[MethodSettings]
    families: tuple[str, ...]
    install: Installer
    events: frozenset[Event]
    variants: Variants
    order: int = 100  # built-in methods 0-90; a new one comes after them
    attention: AttentionBuilder | None = None
    cache: CacheBuilder | None = None
    summary: str = ""
    parallel: Callable[[Any], str | None] = _no_parallel
    refuses: Callable[[Any, ModelSpec], str | None] = lambda settings, spec: None  # why not on this model, or None
    colour: str | None = None  # in every figure that tells methods apart (None: a palette colour from the name)
    model_defaults: Callable[[ModelSpec], dict[str, Any]] = _no_defaults
    defaults_note: Callable[[ModelSpec], str | None] = lambda spec: None

    @property
    def threshold(self) -> str | None:
        """The per-head setting EBC calibrates (``tau``, ``top_p``), or None."""
        return getattr(self.settings, "threshold_name", "") or None

    def check_model(self, spec: ModelSpec, settings: MethodSettings | None = None) -> None:
        """Refuse a model family the method does not run on, and ``settings`` the model cannot run."""
        if spec.family not in self.families:
            runs_on = " or ".join(FAMILY_NAMES[f] for f in self.families)
            raise ConfigError(f"{self.name} runs on {runs_on} models, not on {spec.name} ({FAMILY_NAMES[spec.family]})")
        why = self.refuses(settings, spec) if settings is not None else None
        if why:
            raise ConfigError(f"{self.name} with these settings does not run on {spec.name}: {why}")

    def check_parallel(self, cfg: RunConfig, spec: ModelSpec) -> None:
        """Refuse ``--parallel`` where the run would be wrong or unsupported, never silently."""
        if cfg.parallel is None:
            return
        if spec.family != "wan":
            raise ConfigError(
                f"--parallel runs Wan2.1 models only: diffusers has no context-parallel plan for SkyReels-V2, and the "
                f"chunked runner would need one that splits each window's tokens and a KV cache per rank holding its "
                f"head slice ({spec.name})"
            )
        why = self.parallel(cfg.settings)
        if why:
            raise ConfigError(f"{cfg.label()} does not run under --parallel: {why}; run it on one process")


def by_size(table: dict[str, dict[str, Any]]) -> Callable[[ModelSpec], dict[str, Any]]:
    """A method's ``model_defaults``: its row of ``table`` for the model's size class (``ModelSpec.size``)."""
    return lambda spec: table[spec.size]


def parallel_ok(settings: MethodSettings) -> str | None:
    """``Method.parallel`` of a method whose every setting runs under ``--parallel``."""
    return None


_REGISTRY: dict[str, Method] = {}


def _registry() -> dict[str, Method]:
    """Every ``METHOD`` of this package's modules by name, in ``order``; loaded on first use."""
    if not _REGISTRY:
        found = []
        for info in pkgutil.iter_modules(__path__):
            record = getattr(importlib.import_module(f"{__name__}.{info.name}"), "METHOD", None)
            if isinstance(record, Method):
                found.append(record)
        _REGISTRY.update((m.name, m) for m in sorted(found, key=lambda m: (m.order, m.name)))
    return _REGISTRY


def __getattr__(name: str) -> Any:
    if name == "REGISTRY":  # the loaded table (a dict: tests add a throwaway method with monkeypatch.setitem)
        return _registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def records() -> list[Method]:
    """Every method, registry order."""
    return list(_registry().values())


def names() -> list[str]:
    return list(_registry())


def get(name: str) -> Method:
    """The record of method ``name``; an unknown name is a :class:`ConfigError` that lists the known ones."""
    try:
        return _registry()[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(_registry())}") from None


def settings_for(method: str, values: dict[str, Any] | None = None) -> MethodSettings:
    """Validated settings of ``method`` from a plain dict."""
    return get(method).settings.from_dict(values)


def calibratable() -> dict[str, str]:
    """Methods EBC can calibrate, with the name of their per-head threshold setting."""
    return {m.name: m.threshold for m in records() if m.threshold}


def attention_names(family: str | None = None) -> list[str]:
    """The sparse self-attention methods (of those that run on ``family``, if given)."""
    return [m.name for m in records() if m.attention is not None and (family is None or family in m.families)]


def build_attention(
    settings: MethodSettings, spec: ModelSpec, recorder: Recorder | None = None, seed: int = 0
) -> AttentionMethod | None:
    """The sparse self-attention ``settings`` run or compose with (model defaults filled in by its builder);
    None where diffusers' own attention runs."""
    inner = settings.attention_settings()
    if inner is None:
        return None
    builder = get(inner.method).attention
    if builder is None:
        raise ConfigError(f"{inner.method} is not a self-attention method")
    return builder(inner, spec, recorder, seed)


def build_cache(settings: MethodSettings, spec: ModelSpec) -> GroupCache | None:
    """The chunk cache of a chunked run: the method's own with the model's defaults filled in; None where every
    group step computes."""
    record = get(settings.method)
    record.check_model(spec)
    return record.cache(settings, spec) if record.cache is not None else None


def variants(spec: ModelSpec) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every benchmark variant that runs on ``spec``'s family: name -> (method, settings), registry order."""
    return {
        name: (m.name, settings)
        for m in records()
        if spec.family in m.families
        for name, settings in m.variants(spec).items()
    }


def defaults_text(spec: ModelSpec) -> str:
    """Markdown of what "empty = the model's default" means for ``spec``: its sampling defaults, then each method's
    model-dependent settings (the app shows it beside the model picker)."""
    d = spec.defaults
    size = f"{d.get('width')}x{d.get('height')} px, {d.get('frames')} frames, {d.get('steps')} steps, " \
        f"guidance {d.get('guidance')}"  # fmt: skip
    notes = [m.defaults_note(spec) for m in records() if spec.family in m.families]
    return "  \n".join([f"**{spec.name}** defaults: {size}", " · ".join(n for n in notes if n)])
