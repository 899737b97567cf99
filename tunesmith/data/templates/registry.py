"""Template names → template classes. `auto` picks the model's own chat template when it has one."""

from __future__ import annotations

from ...errors import ConfigError
from .base import ChatTemplate

_TEMPLATES: dict[str, type[ChatTemplate]] = {}


def register(name: str):
    """Class decorator: make a ChatTemplate subclass available as `data.template: <name>`."""

    def decorate(cls: type[ChatTemplate]) -> type[ChatTemplate]:
        cls.name = name
        _TEMPLATES[name] = cls
        return cls

    return decorate


def available_templates() -> list[str]:
    """Registered template names (`auto` is accepted too and resolves to one of them)."""
    return sorted(_TEMPLATES)


def resolve_name(name: str, tokenizer) -> str:
    """`auto` → `model` when the tokenizer ships a chat template, else `alpaca_en`."""
    if name != "auto":
        return name
    return "model" if getattr(tokenizer, "chat_template", None) else "alpaca_en"


def get_template(name: str, tokenizer) -> ChatTemplate:
    """An instance of the named template bound to `tokenizer`."""
    resolved = resolve_name(name, tokenizer)
    if resolved not in _TEMPLATES:
        raise ConfigError(f"unknown template '{name}'", where="data.template",
                          hint=f"choose auto or one of: {', '.join(available_templates())}")
    return _TEMPLATES[resolved](tokenizer)
