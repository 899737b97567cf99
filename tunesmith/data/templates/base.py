"""What every prompt template provides: a rendering with the trained spans marked, and an inference prompt."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..formats import Message


@dataclass
class Rendered:
    """A conversation as text, plus character spans into `text`.

    assistant_spans: what the model is trained to produce, i.e. each reply INCLUDING its end-of-turn
        marker / EOS, so the model learns to stop.
    user_spans: text the user wrote in the prompt; truncation shortens these before anything else,
        so the template's own headers survive.
    """

    text: str
    assistant_spans: list[tuple[int, int]] = field(default_factory=list)
    user_spans: list[tuple[int, int]] = field(default_factory=list)


class ChatTemplate(ABC):
    """Renders conversations (see `formats`) for one prompt style."""

    name = "?"  # set by `registry.register`

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @abstractmethod
    def render(self, messages: list[Message]) -> Rendered:
        """A whole conversation (ending with an assistant reply) with its trained spans."""

    @abstractmethod
    def render_prompt(self, messages: list[Message]) -> str:
        """The conversation so far (ending with a user turn) plus the assistant's generation prefix."""

    @property
    @abstractmethod
    def stop_strings(self) -> list[str]:
        """Strings that end an assistant turn; generation can stop on them."""

    def jinja(self) -> str | None:
        """The same template as Jinja source, in the form Hugging Face and llama.cpp chat templates take
        (`messages`, `add_generation_prompt`, `eos_token`); None when there is none."""
        return None

    def __repr__(self) -> str:
        return f"<template {self.name}>"


class TextBuilder:
    """Concatenates pieces of a rendering and records where the trained and user-written ones lie."""

    def __init__(self):
        self.rendered = Rendered("")
        self._parts: list[str] = []
        self._length = 0

    def add(self, text: str, kind: str | None = None) -> None:
        """Append `text`; kind "assistant" marks it trained, "user" marks it as cuttable prompt text."""
        if kind == "assistant":
            self.rendered.assistant_spans.append((self._length, self._length + len(text)))
        elif kind == "user":
            self.rendered.user_spans.append((self._length, self._length + len(text)))
        self._parts.append(text)
        self._length += len(text)

    def __len__(self) -> int:
        return self._length

    def build(self) -> Rendered:
        self.rendered.text = "".join(self._parts)
        return self.rendered
