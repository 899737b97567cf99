"""The model's own chat template (`tokenizer.apply_chat_template`).

Jinja templates do not say which characters are the assistant's, so the trained spans are found by
rendering prefixes: conversation[:i] with the generation prompt, then conversation[:i+1]; what the
second adds to the first is assistant turn i, end-of-turn marker included. That only works when each
rendering is a prefix of the next, which is checked rather than assumed.
"""

from __future__ import annotations

from ...errors import ConfigError, DataError
from ..formats import Message, plain_messages
from .base import ChatTemplate, Rendered
from .registry import register

_PROBE = "\u2063tunesmith-probe\u2063"  # invisible separators: will not occur in real replies


@register("model")
class ModelTemplate(ChatTemplate):
    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template 'model' needs a tokenizer with a chat template, and this one has none",
                              where="data.template", hint="use chatml, alpaca_en or alpaca_zh")
        super().__init__(tokenizer)
        self._stops: list[str] | None = None

    def render(self, messages: list[Message]) -> Rendered:
        plain = plain_messages(messages)
        text = self._apply(plain, generation=False)
        rendered = Rendered(text)
        for index, message in enumerate(plain):
            if message["role"] != "assistant":
                continue
            before = self._apply(plain[:index], generation=True)
            through = self._apply(plain[:index + 1], generation=False)
            if not (through.startswith(before) and text.startswith(through)):
                raise DataError(
                    f"the model's chat template is not prefix-consistent at turn {index} (rendering a conversation "
                    "changes how its earlier turns look), so the assistant's tokens cannot be located",
                    hint="set data.template to chatml (or alpaca_en / alpaca_zh)")
            # Trailing whitespace after the end-of-turn marker belongs to the layout, not to the reply.
            end = max(len(before), len(through.rstrip()))
            rendered.assistant_spans.append((len(before), end))
        rendered.user_spans = _find_user_spans(text, plain)
        return rendered

    def render_prompt(self, messages: list[Message]) -> str:
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("render_prompt needs a conversation that ends with a user turn")
        return self._apply(plain_messages(messages), generation=True)

    def jinja(self) -> str | None:
        template = self.tokenizer.chat_template
        return template if isinstance(template, str) else None

    @property
    def stop_strings(self) -> list[str]:
        if self._stops is None:
            self._stops = self._end_of_turn()
        return self._stops

    def _end_of_turn(self) -> list[str]:
        """The marker the template puts after a reply (e.g. `<|im_end|>`), found by rendering a probe."""
        eos = [self.tokenizer.eos_token] if getattr(self.tokenizer, "eos_token", None) else []
        try:
            text = self._apply([{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}], False)
        except DataError:
            return eos
        after = text[text.find(_PROBE) + len(_PROBE):].strip().splitlines()
        marker = after[0].strip() if after else ""
        return [marker] + [s for s in eos if s != marker] if marker else eos

    def _apply(self, messages: list[Message], generation: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        except Exception as exc:  # jinja templates raise whatever they like (e.g. "roles must alternate")
            raise DataError(f"the model's chat template failed: {exc}",
                            hint="the template may not support these roles (e.g. system); "
                                 "try data.template: chatml") from None


def _find_user_spans(text: str, messages: list[Message]) -> list[tuple[int, int]]:
    """Where each user message's text sits in the rendering (searched in order; skipped if the template altered it)."""
    spans, cursor = [], 0
    for message in messages:
        found = text.find(message["content"], cursor) if message["content"] else -1
        if found < 0:
            continue
        end = found + len(message["content"])
        if message["role"] == "user":
            spans.append((found, end))
        cursor = end
    return spans
