"""Model support registry: the code half of a model family, found by diffusers model or pipeline class name.

Every module in this package (other than `base`) is imported on the first lookup and registers its
`ModelSupport` subclass with `@register`; adding a model with a new structure is adding one module here (plus its
family file). `model_support(pipe_or_model)` finds the support of a pipeline or transformer (by the class names in
its MRO, then its components' classes); a model nothing registers gets the defaults of `ModelSupport`
(cond then uncond forwards, no masks). `support_for_family(family)` finds it before a pipeline
exists (the tiny builders), by the family's pipeline class, then its components' diffusers classes.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Any, TypeVar

from runtime.models.base import ModelSupport, ModelSupportError

__all__ = ["ModelSupport", "ModelSupportError", "model_support", "register", "registered", "support_for_family"]

_BY_CLASS: dict[str, ModelSupport] = {}
_SUPPORTS: list[ModelSupport] = []
_DEFAULT = ModelSupport()
_discovered = False
_discovering = threading.RLock()  # reentrant: a module's import may itself look a support up

S = TypeVar("S", bound=type[ModelSupport])


def register(cls: S) -> S:
    """Class decorator: register one instance of `cls` under its model and pipeline class names."""
    support = cls()
    for name in (*cls.model_classes, *cls.pipeline_classes,
                 *(p for names in cls.same_transformer_pipelines.values() for p in names)):
        other = _BY_CLASS.get(name)
        if other is not None and type(other) is not cls:
            raise ValueError(f"diffusers class {name} is registered by both {type(other).__name__} and {cls.__name__}")
        _BY_CLASS[name] = support
    _SUPPORTS[:] = [s for s in _SUPPORTS if type(s) is not cls] + [support]
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    with _discovering:  # a second thread's first lookup waits for the modules, never sees half a registry
        if not _discovered:
            for module in pkgutil.iter_modules(__path__):
                if module.name != "base" and not module.name.startswith("_"):
                    importlib.import_module(f"{__name__}.{module.name}")
            _discovered = True


def registered() -> tuple[ModelSupport, ...]:
    """Every registered model support (the diffusers_private self-check walks their processors)."""
    _discover()
    return tuple(_SUPPORTS)


def _lookup(names: list[str]) -> ModelSupport | None:
    _discover()
    return next((_BY_CLASS[name] for name in names if name in _BY_CLASS), None)


def model_support(obj: Any) -> ModelSupport:
    """The support of a diffusers pipeline or model (the defaults when no module registers its classes)."""
    found = _lookup([klass.__name__ for klass in type(obj).__mro__])
    if found is None:
        components = getattr(obj, "components", None)
        if isinstance(components, dict):
            found = _lookup([type(module).__name__ for module in components.values() if module is not None])
    return found or _DEFAULT


def support_for_family(family: Any) -> ModelSupport:
    """The support of a family's pipeline class, else of its components' classes (the defaults when none)."""
    return _lookup([family.pipeline_class, *(c.diffusers_class for c in family.components)]) or _DEFAULT
