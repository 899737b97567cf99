"""Generation shared by chat, batch generation and the demo: prompt rendering, sampling, stopping."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..data.templates.registry import get_template
from ..errors import ConfigError
from ..models.loading import LoadedModel

from .router import AUTO

if TYPE_CHECKING:
    from .adapter_set import AdapterSet
    from .router import Route

MAX_NEW_TOKENS = 65_536
# (lowest, highest, whether the lowest is allowed) for each number a request may set; None: no bound that side.
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "max_new_tokens": (1, MAX_NEW_TOKENS, True), "temperature": (0, 100, True), "top_p": (0, 1, False),
    "top_k": (0, None, True), "repetition_penalty": (0, 100, False), "seed": (0, 2**64 - 1, True)}


@dataclass
class SamplingOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def check(self, names: dict[str, str] | None = None) -> SamplingOptions:
        """Raise a ConfigError naming the first bad field, as `names` calls it (a CLI flag, a request's key)."""
        for item in fields(self):
            value, (low, high, low_ok) = getattr(self, item.name), _RANGES[item.name]
            if value is None and item.name == "seed":
                continue
            name = (names or {}).get(item.name, item.name)
            whole = item.type in ("int", "int | None")
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) \
                    or not math.isfinite(value):
                raise ConfigError(f"must be a finite {'whole ' if whole else ''}number, got {value!r}", where=name)
            if (low is not None and (value < low or (value == low and not low_ok))) \
                    or (high is not None and value > high):
                bounds = f"{'>=' if low_ok else '>'} {low}" + (f" and <= {high}" if high is not None else "")
                raise ConfigError(f"must be {bounds}, got {value!r}", where=name)
        return self

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens,
                                  "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


class Generator:
    """Renders conversations with the run's template and decodes only the new tokens."""

    def __init__(self, loaded: LoadedModel, adapter_set: AdapterSet | None = None):
        """`adapter_set`: the model is that set's (inference/adapter_set.py); each adapter keeps its own template,
        `adapter` is the one used when a request names none (`use` changes it)."""
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.adapter_set = adapter_set
        self.adapter = adapter_set.default if adapter_set is not None else None
        self.routing = False  # `use("auto")`: conversations naming no adapter are routed (the set's router)
        self._templates: dict[str, Any] = {}
        self.template = get_template(loaded.template_name, loaded.tokenizer)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def template_for(self, adapter: str | None):
        """The template prompts for `adapter` are rendered with (None: the current adapter's)."""
        if self.adapter_set is None or adapter is None or adapter == self.adapter:
            return self.template
        name = self.adapter_set.template_name(adapter)
        if name not in self._templates:
            self._templates[name] = get_template(name, self.tokenizer)
        return self._templates[name]

    def use(self, adapter: str) -> None:
        """Make `adapter` (or the set's base name) the one used when none is named."""
        if self.adapter_set is None:
            raise ConfigError("only an adapter set (a manifest .yaml) has adapters to choose from", where="adapter")
        if adapter == AUTO:
            self._router()
            self.routing = True  # the current adapter (and its template) stays for what is not routed
            return
        self.template = self.template_for(adapter)
        self.adapter = adapter
        self.routing = False

    def _router(self):
        router = getattr(self.adapter_set, "router", None)
        if router is None:
            file = self.adapter_set.manifest.file if self.adapter_set is not None else "the model"
            raise ConfigError(f"'{AUTO}' needs a router: the set has no `router:` section", where=f"{file}: router",
                              hint="docs/multitask.md, Routing")
        return router

    def resolve(self, conversations: list[list[dict]], adapters: list[str | None] | None = None
                ) -> tuple[list[str | None], list[list[dict]], list[Route | None]]:
        """Each conversation's adapter, `auto` (or none while routing) replaced by the router's choice: the
        names, the conversations as they are generated (a stripped prefix removed) and each routed one's Route."""
        names = [name or (AUTO if self.routing else self.adapter) for name in (adapters or [None] * len(conversations))]
        routes: list[Route | None] = [None] * len(names)
        asked = [i for i, name in enumerate(names) if name == AUTO]
        if asked:
            found = self._router().route_many([conversations[i] for i in asked])
            conversations = list(conversations)
            for i, route in zip(asked, found):
                names[i], conversations[i], routes[i] = route.adapter, route.messages, route
        return names, conversations, routes

    def _stop_kwargs(self, templates: list | None = None) -> dict[str, Any]:
        # A batch mixing templates stops on any of their stop strings: a row's text is cut at its own afterwards.
        stops = list(dict.fromkeys(s for template in (templates or [self.template])
                                   for s in getattr(template, "stop_strings", []) or [] if s))
        return {"stop_strings": stops, "tokenizer": self.tokenizer} if stops else {}

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        self.tokenizer.padding_side = "left"  # generation appends on the right, so pad on the left
        # The rendered prompt already holds any BOS the template wants; adding special tokens would double it.
        has_bos = self.tokenizer.bos_token and all(p.startswith(self.tokenizer.bos_token) for p in prompts)
        return self.tokenizer(prompts, return_tensors="pt", padding=True,
                              add_special_tokens=not has_bos).to(self.model.device)

    @torch.inference_mode()
    def generate(self, conversations: list[list[dict]], options: SamplingOptions, streamer=None,
                 should_stop: Callable[[], bool] | None = None,
                 adapters: list[str | None] | None = None) -> list[str]:
        """`should_stop`: polled after every token; True ends the generation there (a server shutting down).
        `adapters`: for an adapter set, the adapter of each conversation (None: the current one); rows for
        different adapters are generated together in one mixed batch."""
        if options.seed is not None:
            torch.manual_seed(options.seed)
        if adapters is not None and len(adapters) != len(conversations):
            raise ValueError("one adapter per conversation")
        if self.adapter_set is None and any(adapters or []):
            raise ConfigError("only an adapter set (a manifest .yaml) has adapters to choose from", where="adapter")
        names, conversations, _ = self.resolve(conversations, adapters)
        templates = [self.template_for(name) for name in names]
        prompts = [template.render_prompt(messages) for template, messages in zip(templates, conversations)]
        inputs = self._encode(prompts)
        extra = {}
        if should_stop is not None:
            from transformers import StoppingCriteria, StoppingCriteriaList

            class _Stop(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    return torch.full((input_ids.shape[0],), should_stop(), dtype=torch.bool, device=input_ids.device)

            extra["stopping_criteria"] = StoppingCriteriaList([_Stop()])
        distinct = list({id(template): template for template in templates}.values())
        with (self.adapter_set.using(names) if self.adapter_set is not None else nullcontext({})) as adapter_kwargs:
            output = self.model.generate(**inputs, **options.generate_kwargs(), **self._stop_kwargs(distinct),
                                         **extra, **adapter_kwargs, pad_token_id=self.tokenizer.pad_token_id,
                                         streamer=streamer)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [self._clean(text, template) for text, template in zip(texts, templates)]

    def _clean(self, text: str, template=None) -> str:
        for stop in getattr(template or self.template, "stop_strings", []) or []:
            if stop and stop in text:
                text = text.split(stop, 1)[0]
        return text.strip()
