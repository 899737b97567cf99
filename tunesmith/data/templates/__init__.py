"""Prompt templates. Importing this package registers every built-in template."""

from . import alpaca_en, alpaca_zh, chatml, model  # noqa: F401  (registration side effect)
from .base import ChatTemplate, Rendered
from .registry import available_templates, get_template, register

__all__ = ["ChatTemplate", "Rendered", "available_templates", "get_template", "register"]
