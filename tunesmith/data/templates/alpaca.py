"""Alpaca-style sections (instruction / optional input / response), repeated once per turn.

    {system}                      <- only when there is a system prompt

    ### Instruction:
    {instruction}

    ### Input:                    <- only when the record has an input
    {input}

    ### Response:
    {output}</s>

The EOS token ends every reply and is trained, so the model learns to stop; at inference the next
instruction header is a second, belt-and-braces stop string.
"""

from __future__ import annotations

import json

from ..formats import Message
from .base import ChatTemplate, Rendered, TextBuilder


class AlpacaTemplate(ChatTemplate):
    instruction_header = "### Instruction:"
    input_header = "### Input:"
    response_header = "### Response:"

    def render(self, messages: list[Message]) -> Rendered:
        return self._build(messages).build()

    def render_prompt(self, messages: list[Message]) -> str:
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("render_prompt needs a conversation that ends with a user turn")
        return self._build(messages).build().text

    @property
    def stop_strings(self) -> list[str]:
        eos = [self.tokenizer.eos_token] if getattr(self.tokenizer, "eos_token", None) else []
        return eos + [self.instruction_header]

    def jinja(self) -> str:
        def literal(text: str) -> str:
            return json.dumps(text, ensure_ascii=False)

        return ("{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}"
                "{% elif message['role'] == 'user' %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
                "{{ " + literal(self.instruction_header + "\n") + " + message['content'] + "
                + literal(f"\n\n{self.response_header}\n") + " }}"
                "{% else %}{{ message['content'] + (eos_token or '') }}{% endif %}{% endfor %}")

    def _build(self, messages: list[Message]) -> TextBuilder:
        out = TextBuilder()
        eos = getattr(self.tokenizer, "eos_token", None) or ""
        for message in messages:
            if message["role"] == "system":
                out.add(message["content"])
            elif message["role"] == "user":
                out.add(f"\n\n{self.instruction_header}\n" if len(out) else f"{self.instruction_header}\n")
                out.add(message["content"], "user")
                if message.get("input"):
                    out.add(f"\n\n{self.input_header}\n")
                    out.add(message["input"], "user")
                out.add(f"\n\n{self.response_header}\n")
            else:
                out.add(message["content"] + eos, "assistant")
        return out
