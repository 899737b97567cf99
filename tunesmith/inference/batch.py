"""Batch generation from a prompts file to JSONL."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.formats import to_conversation
from ..data.readers import read_records
from ..errors import DataError
from ..reporting import Reporter, reporter_or_default
from .generation import Generator, SamplingOptions
from .router import AUTO


def load_prompts(path: str) -> list[tuple[list[dict], dict]]:
    """Each prompt becomes (conversation without the answer, the original record). Plain .txt: one prompt a line."""
    if Path(path).suffix == ".txt":
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [([{"role": "user", "content": line}], {"prompt": line}) for line in lines if line.strip()]
    prompts = []
    for record in read_records(path):
        data = record.data
        if isinstance(data.get("prompt"), str):
            prompts.append(([{"role": "user", "content": data["prompt"]}], data))
            continue
        if "messages" in data and isinstance(data["messages"], list) and data["messages"] \
                and data["messages"][-1].get("role") != "assistant":
            prompts.append((list(data["messages"]), data))
            continue
        probe = {**data, "output": data.get("output") or "-"} if "instruction" in data else data
        try:
            messages = to_conversation(probe, "auto", file=record.file, line=record.line)
        except DataError:
            raise DataError("a prompt record needs 'prompt', 'instruction' or 'messages'",
                            file=record.file, line=record.line) from None
        prompts.append((messages[:-1] if messages[-1]["role"] == "assistant" else messages, data))
    return prompts


def generate_file(generator: Generator, prompts_path: str, out_path: str, options: SamplingOptions,
                  batch_size: int = 8, reporter: Reporter | None = None) -> int:
    """Every prompt's reply, one JSON line each; `reporter` shows the progress. Returns the number written."""
    prompts = load_prompts(prompts_path)
    adapters = record_adapters(generator, prompts, prompts_path)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(out, "w", encoding="utf-8") as handle, \
                reporter_or_default(reporter).progress("generating", len(prompts)) as advance:
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                # Records for different adapters of a set share a batch (PEFT's mixed-adapter batch).
                conversations = [messages for messages, _ in chunk]
                names, routes = adapters[start:start + batch_size] if adapters is not None else None, None
                if names is not None:  # `auto` records (or all, under --adapter auto): the router picks
                    names, conversations, routes = generator.resolve(conversations, names)
                replies = generator.generate(conversations, options, **({"adapters": names} if names else {}))
                for index, ((_, record), messages, reply) in enumerate(zip(chunk, conversations, replies)):
                    # A routed record says where it went: `routed_adapter` and what decided (`routed_by`).
                    route = routes[index] if routes is not None else None
                    routed = {"routed_adapter": route.adapter, "routed_by": route.by} if route is not None else {}
                    handle.write(json.dumps({**record, "messages": messages, "response": reply, **routed},
                                            ensure_ascii=False) + "\n")
                advance(len(chunk))
    except OSError as exc:  # a write (disk full) names no file; the message should
        exc.filename = exc.filename or str(out)
        raise
    return len(prompts)


def record_adapters(generator: Generator, prompts: list[tuple[list[dict], dict]], path: str) -> list | None:
    """Each record's `adapter` field (None where absent: the generator's current adapter), checked against the set
    before anything generates; None when no record names one and the model is not a set."""
    names = [record.get("adapter") for _, record in prompts]
    if all(name is None for name in names) and generator.adapter_set is None:
        return None
    for index, name in enumerate(names, 1):
        if name is None:
            continue
        if generator.adapter_set is None:
            raise DataError(f"record {index} names an adapter, but the model is not an adapter set", file=path,
                            field="adapter", hint="pass the set's manifest (.yaml) as the model, or drop the field")
        if name == AUTO and getattr(generator.adapter_set, "router", None) is None:
            raise DataError(f"record {index} asks for '{AUTO}', but the set has no router", file=path,
                            field="adapter", hint="add a `router:` section to the manifest (docs/multitask.md)")
        if not isinstance(name, str) or (name != AUTO and not generator.adapter_set.has(name)):
            raise DataError(f"record {index}: no adapter {name!r} in the set", file=path, field="adapter",
                            hint=f"one of: {', '.join(generator.adapter_set.names)}")
    return names
