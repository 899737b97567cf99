"""ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`), usable with any tokenizer: on one without the
ChatML special tokens the markers are plain text, which the model learns just as well."""

from __future__ import annotations

from ..formats import Message, user_text
from .base import ChatTemplate, Rendered, TextBuilder
from .registry import register

START, END = "<|im_start|>", "<|im_end|>"


@register("chatml")
class ChatMLTemplate(ChatTemplate):
    def render(self, messages: list[Message]) -> Rendered:
        return self._build(messages).build()

    def render_prompt(self, messages: list[Message]) -> str:
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("render_prompt needs a conversation that ends with a user turn")
        out = self._build(messages)
        out.add(f"{START}assistant\n")
        return out.build().text

    @property
    def stop_strings(self) -> list[str]:
        return [END]

    def jinja(self) -> str:
        return ("{% for message in messages %}{{ '" + START + "' + message['role'] + '\\n' + message['content'] + '"
                + END + "\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '" + START + "assistant\\n' }}{% endif %}")

    def _build(self, messages: list[Message]) -> TextBuilder:
        out = TextBuilder()
        for message in messages:
            role = message["role"]
            out.add(f"{START}{role}\n")
            if role == "assistant":
                # The reply and its END marker are trained; the newline after it belongs to the next header.
                out.add(message["content"] + END, "assistant")
            elif role == "user":
                out.add(user_text(message), "user")
                out.add(END)
            else:
                out.add(message["content"] + END)
            out.add("\n")
        return out
