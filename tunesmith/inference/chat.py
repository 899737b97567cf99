"""A chat reply streamed as it is generated; the terminal REPL that shows it is the CLI's (`tunesmith/cli/chat.py`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from transformers import TextIteratorStreamer

from .generation import Generator, SamplingOptions


class StreamedReply:
    """Iterate for the reply's text piece by piece as tokens are generated; afterwards `text` is the whole reply
    (cut at the template's stop string). A stop string being spelled out token by token is held back. An error
    in generation is raised when the iteration ends."""

    def __init__(self, generator: Generator, messages: list[dict], options: SamplingOptions,
                 adapter: str | None = None):
        """`adapter`: of an adapter set, the adapter that replies (None: the generator's current one)."""
        self.generator, self.messages, self.options, self.adapter = generator, messages, options, adapter
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        streamer = TextIteratorStreamer(self.generator.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def work():
            try:
                # `adapters` only when one is chosen: a stand-in generator without it keeps working
                extra = {"adapters": [self.adapter]} if self.adapter is not None else {}
                result["text"] = self.generator.generate([self.messages], self.options, streamer=streamer,
                                                         **extra)[0]
            except Exception as exc:  # surfaced below, in the caller's thread
                result["error"] = exc
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        shown = ""
        stops = getattr(self.generator.template_for(self.adapter), "stop_strings", []) or []
        for piece in streamer:
            shown += piece
            if not any(s and s in shown for s in stops):
                yield piece
        thread.join()
        if "error" in result:
            raise result["error"]
        self.text = result["text"]
