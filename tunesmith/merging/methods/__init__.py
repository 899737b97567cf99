"""Merge methods: one module each, registered by name. A method combines one tensor of every source model."""

from __future__ import annotations

from .base import MergeMethod, TensorParams, available_methods, get_method, register
from . import dare, linear, slerp, task_arithmetic, ties  # noqa: F401  (registration)

__all__ = ["MergeMethod", "TensorParams", "available_methods", "get_method", "register"]
