"""An Ollama `Modelfile` for an exported GGUF: FROM, TEMPLATE (Go template syntax), stop tokens, parameters.

Ollama cannot run a Jinja chat template, and a Jinja template cannot be translated into Go in general. What can be
done for any template, tunesmith's own and a model's Jinja alike, is to *observe* it: render a few probe
conversations whose contents are unique markers, and read off the text that sits between turns (before the first
user turn, between a user turn and the reply, between a reply and the next user turn, after the last user turn,
and the same around a system prompt). The Go template then emits exactly those pieces between `.Messages`. The
decomposition is checked by rendering a longer conversation both ways; a template it does not reproduce (one that
depends on the date, or on the position of a turn beyond first/other) raises `TemplateNotDerivable`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..data.templates.base import ChatTemplate

_S, _U1, _A1, _U2, _A2, _U3 = "tsSYSTEMprobe", "tsUSERone", "tsREPLYone", "tsUSERtwo", "tsREPLYtwo", "tsUSERthree"


class TemplateNotDerivable(ValueError):
    """The chat template could not be expressed as an Ollama template."""


@dataclass(frozen=True)
class TurnPieces:
    """The text between turns, as rendered by a chat template."""

    start_user: str  # before the first user turn (no system prompt)
    user_assistant: str  # after a user turn, before the reply
    assistant_user: str  # after a reply, before the next user turn
    user_end: str  # after the last user turn: its end marker and the reply's header (the generation prompt)
    start_system: str | None  # before a system prompt; None when the template has no system turn
    system_user: str | None  # after the system prompt, before the first user turn

    def render(self, messages: list[dict]) -> str:
        """What the Go template produces, in Python: the reference the probes are checked against."""
        out, prev = [], ""
        for i, message in enumerate(messages):
            role, last = message["role"], i == len(messages) - 1
            if role == "system":
                if self.start_system is None:
                    continue
                out += [self.start_system if prev == "" else "", message["content"]]
            elif role == "user":
                lead = {"system": self.system_user, "assistant": self.assistant_user}.get(prev, self.start_user)
                out += [lead or "", message["content"], self.user_end if last else ""]
            elif role == "assistant":
                out += [self.user_assistant, message["content"]]
            prev = role
        return "".join(out)


def _between(text: str, left: str | None, right: str | None) -> str:
    start = text.index(left) + len(left) if left else 0
    end = text.index(right, start) if right else len(text)
    return text[start:end]


def derive_turn_pieces(template: ChatTemplate, *, strip_prefix: str | None = None) -> TurnPieces:
    """Read the between-turn text off `template` (see the module doc). `strip_prefix` (the BOS token's text, when
    the tokenizer adds BOS itself) is removed from the start of a conversation so that it is not doubled."""
    def msg(role, content):
        return {"role": role, "content": content}

    try:
        one = template.render_prompt([msg("user", _U1)])
        reply = template.render([msg("user", _U1), msg("assistant", _A1)]).text
        two = template.render_prompt([msg("user", _U1), msg("assistant", _A1), msg("user", _U2)])
    except Exception as exc:
        raise TemplateNotDerivable(f"the chat template failed on a probe conversation: {exc}") from None
    try:
        with_system = template.render_prompt([msg("system", _S), msg("user", _U1)])
    except Exception:  # a template without a system turn
        with_system = None
    try:
        pieces = TurnPieces(
            start_user=_between(one, None, _U1), user_end=_between(one, _U1, None),
            user_assistant=_between(reply, _U1, _A1), assistant_user=_between(two, _A1, _U2),
            start_system=_between(with_system, None, _S) if with_system else None,
            system_user=_between(with_system, _S, _U1) if with_system else None)
    except ValueError:
        raise TemplateNotDerivable("the chat template does not show a message's text unchanged") from None
    if strip_prefix:
        pieces = TurnPieces(**{k: (v[len(strip_prefix):] if k.startswith("start_") and v and v.startswith(strip_prefix)
                                   else v) for k, v in vars(pieces).items()})
    # The check: a longer conversation, rendered by the template and from the pieces, must agree.
    long = [msg("user", _U1), msg("assistant", _A1), msg("user", _U2), msg("assistant", _A2), msg("user", _U3)]
    cases = [long] + ([[msg("system", _S)] + long] if with_system else [])
    for case in cases:
        expected = template.render_prompt(case)
        if strip_prefix and expected.startswith(strip_prefix):
            expected = expected[len(strip_prefix):]
        if pieces.render(case) != expected:
            raise TemplateNotDerivable("the chat template renders turns differently depending on more than the "
                                       "previous turn")
    return pieces


def _lit(text: str) -> str:
    """A Go string literal (JSON's escapes are a subset of Go's), printed by a template action."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def go_template(pieces: TurnPieces) -> str:
    """The Ollama TEMPLATE for `pieces`: literal text only inside `{{ "..." }}`, so whitespace trimming is safe."""
    system = (f'{{{{- if eq .Role "system" }}}}{{{{ if eq $prev "" }}}}{_lit(pieces.start_system)}{{{{ end }}}}'
              "{{ .Content }}\n{{- else if eq .Role \"user\" }}"
              if pieces.start_system is not None else '{{- if eq .Role "system" }}\n{{- else if eq .Role "user" }}')
    after_system = pieces.system_user if pieces.start_system is not None else pieces.start_user
    lines = [
        '{{- $prev := "" }}',
        "{{- range $i, $_ := .Messages }}",
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}",
        system + f'{{{{ if eq $prev "system" }}}}{_lit(after_system)}'
        f'{{{{ else if eq $prev "assistant" }}}}{_lit(pieces.assistant_user)}'
        f"{{{{ else }}}}{_lit(pieces.start_user)}{{{{ end }}}}"
        f"{{{{ .Content }}}}{{{{ if $last }}}}{_lit(pieces.user_end)}{{{{ end }}}}",
        f'{{{{- else if eq .Role "assistant" }}}}{_lit(pieces.user_assistant)}{{{{ .Content }}}}',
        "{{- end }}",
        "{{- $prev = .Role }}",
        "{{- end }}",
    ]
    return "\n".join(lines)


def modelfile(gguf_name: str, *, template: str | None, stops: list[str], parameters: dict[str, float | int]) -> str:
    """The Modelfile text. `template` None: no TEMPLATE line (Ollama then guesses from the GGUF's chat template)."""
    lines = ["# Ollama: ollama create NAME -f Modelfile  (written by tunesmith export --gguf)", f"FROM ./{gguf_name}"]
    if template is not None:
        if '"""' in template:
            raise TemplateNotDerivable('the template contains """, which a Modelfile cannot quote')
        lines.append(f'TEMPLATE """{template}"""')
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    for key, value in parameters.items():
        lines.append(f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n"
