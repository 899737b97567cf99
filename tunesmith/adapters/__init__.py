"""Adapter layers that PEFT does not provide (bottleneck adapters for decoder LLMs)."""
