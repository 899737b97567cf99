"""Interactive chat in the terminal with streamed tokens."""

from __future__ import annotations

import threading

from rich.console import Console
from transformers import TextIteratorStreamer

from .generation import Generator, SamplingOptions

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
        reply = _stream_reply(generator, messages, options, console)
        history.append({"role": "assistant", "content": reply})


def _stream_reply(generator: Generator, messages: list[dict], options: SamplingOptions, console: Console) -> str:
    streamer = TextIteratorStreamer(generator.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict = {}

    def work():
        try:
            result["text"] = generator.generate([messages], options, streamer=streamer)[0]
        except Exception as exc:  # surfaced below, in the main thread
            result["error"] = exc
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    console.print("bot> ", end="")
    shown = ""
    stops = getattr(generator.template, "stop_strings", []) or []
    for piece in streamer:
        shown += piece
        # Hide a stop string being spelled out token by token; the final text is cut at it anyway.
        if not any(s and s in shown for s in stops):
            console.print(piece, end="", markup=False, highlight=False)
    thread.join()
    console.print()
    if "error" in result:
        raise result["error"]
    return result["text"]
