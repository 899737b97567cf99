"""`tunesmith chat`: the terminal REPL, showing each reply as `inference.chat.StreamedReply` generates it."""

from __future__ import annotations

from rich.console import Console

from ..inference.chat import StreamedReply
from ..inference.generation import Generator, SamplingOptions

HELP = "commands: /reset clears the conversation, /system TEXT sets the system prompt, /exit quits"


def chat_loop(generator: Generator, options: SamplingOptions, system: str | None = None,
              console: Console | None = None, read=input) -> None:
    console = console or Console()
    history: list[dict] = []
    console.print(f"[dim]{HELP}[/]")
    while True:
        try:
            text = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history.clear()
            console.print("[dim](conversation cleared)[/]")
            continue
        if text.startswith("/system"):
            system = text[len("/system"):].strip() or None
            history.clear()
            console.print(f"[dim](system prompt {'set' if system else 'cleared'}; conversation cleared)[/]")
            continue
        if text.startswith("/"):
            console.print(f"[dim]unknown command. {HELP}[/]")
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        reply = StreamedReply(generator, messages, options)
        console.print("bot> ", end="")
        try:
            for piece in reply:
                console.print(piece, end="", markup=False, highlight=False)
        finally:
            console.print()
        history.append({"role": "assistant", "content": reply.text})
