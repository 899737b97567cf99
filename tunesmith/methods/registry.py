"""The one place where fine-tuning methods are registered and looked up by name."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method

_METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    _METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    _ensure_loaded()
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'", where="method.name",
                          hint=f"choose one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def all_methods() -> dict[str, Method]:
    _ensure_loaded()
    return dict(_METHODS)


def _ensure_loaded() -> None:
    # Importing the modules registers them; kept lazy so `import tunesmith` stays cheap.
    from . import (adalora, bottleneck, dora, freeze, full, hybrid, ia3, lora, loraplus,  # noqa: F401
                   pissa, prompt_methods, qlora, rslora, vera)
