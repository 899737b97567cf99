"""`tunesmith chat`: the terminal REPL, showing each reply as `inference.chat.StreamedReply` generates it."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from ..inference.chat import StreamedReply
from ..inference.generation import Generator, SamplingOptions

HELP = "commands: /reset clears the conversation, /system TEXT sets the system prompt, /exit quits"
SET_HELP = ("; /adapter NAME switches the adapter (/adapter base: the base alone; /adapter auto: the router picks "
            "one per message; /adapter lists them)")


def chat_loop(generator: Generator, options: SamplingOptions, system: str | None = None,
              console: Console | None = None, read=input) -> None:
    console = console or Console()
    history: list[dict] = []
    adapter_set = generator.adapter_set
    help_text = HELP + (SET_HELP if adapter_set is not None else "")
    console.print(f"[dim]{help_text}[/]")
    if adapter_set is not None:
        console.print(f"[dim](adapter {'auto' if generator.routing else generator.adapter})[/]", highlight=False)
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
        if adapter_set is not None and (text == "/adapter" or text.startswith("/adapter ")):
            name = text[len("/adapter"):].strip()
            if name == "auto" and getattr(adapter_set, "router", None) is not None:
                generator.use(name)
                console.print("[dim](adapter auto: the router picks one for each message)[/]", highlight=False)
                continue
            if not name or not adapter_set.has(name):
                unknown = f"no adapter '{name}'. " if name else ""
                names = [*adapter_set.names, *(["auto"] if getattr(adapter_set, "router", None) else [])]
                now = "auto" if generator.routing else generator.adapter or ""
                console.print(f"[dim]{escape(unknown)}adapters: {escape(', '.join(names))} "
                              f"(now: {escape(now)})[/]", highlight=False)
                continue
            generator.use(name)  # the conversation goes on; the next reply is rendered with this adapter's template
            console.print(f"[dim](adapter {escape(name)})[/]", highlight=False)
            continue
        if text.startswith("/"):
            console.print(f"[dim]unknown command. {help_text}[/]")
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        adapter = None
        if generator.routing:  # the router picks this reply's adapter; the conversation keeps what it saw
            (adapter,), (messages,), (route,) = generator.resolve([messages])
            history[-1] = messages[-1]
            console.print(f"[dim](routed to {escape(adapter)} by {escape(route.by)})[/]", highlight=False)
        reply = StreamedReply(generator, messages, options, adapter)
        console.print("bot> ", end="")
        try:
            for piece in reply:
                console.print(piece, end="", markup=False, highlight=False)
        finally:
            console.print()
        history.append({"role": "assistant", "content": reply.text})
