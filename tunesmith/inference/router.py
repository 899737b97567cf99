"""Routing requests that name no adapter of a set (`model: auto`) to one, as the manifest's `router:` says.

    router:
      prefix: strip              # "[sql] ..." or "sql: ..." at the start of the message picks `sql` (strip | keep)
      rules:                     # tried in order; the first that matches wins
        - adapter: sql
          keywords: [select, join, table]      # any of these whole words, case-insensitive
        - adapter: support
          regex: "\\b(order|refund)s?\\b"      # re.search, case-insensitive
      classifier: runs/router    # a `task: classification` run whose labels are adapter names (or the base's)
      min_score: 0.5             # below this probability the classifier's choice is not taken (default 0)
      fallback: support          # when nothing above decides (default: the set's default adapter)
      eval_data: routing.jsonl   # labelled prompts for `tunesmith eval SET.yaml --router-data`

Only the last user message is looked at. The steps run in the order above; each is optional. The classifier is a
callable attached after loading (`Router.classify`): loading a classification run is the tasks layer's work
(`tunesmith.api.load_router`), so this module stays below it and holds no weights itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, DataError

AUTO = "auto"  # the adapter name that asks for routing (OpenAI `model: auto`, `--adapter auto`, a record's field)
ROUTER_KEYS = {"prefix", "rules", "classifier", "min_score", "fallback", "eval_data"}
RULE_KEYS = {"adapter", "keywords", "regex"}
PREFIX_MODES = {"strip", "keep"}
# "[name] text" or "name: text": a name as adapter names are spelled (adapter_set.NAME), then optional spaces.
PREFIX = re.compile(r"^\s*(?:\[(?P<bracket>[A-Za-z0-9][\w\-]{0,63})\]|(?P<colon>[A-Za-z0-9][\w\-]{0,63}):)\s*")


@dataclass
class Rule:
    adapter: str
    pattern: re.Pattern
    source: str  # how the manifest wrote it, for reports


@dataclass
class RouterSpec:
    file: Path
    prefix: str | None = None  # "strip", "keep" or None (prefixes are not looked for)
    rules: list[Rule] = field(default_factory=list)
    classifier: Path | None = None
    classifier_labels: list[str] = field(default_factory=list)
    min_score: float = 0.0
    fallback: str = ""
    eval_data: Path | None = None

    def where(self, *keys: str | int) -> str:
        return f"{self.file}: " + ".".join(["router", *map(str, keys)])

    def targets(self) -> set[str]:
        """Every name this router can send a request to."""
        return {self.fallback, *(rule.adapter for rule in self.rules), *self.classifier_labels}


@dataclass
class Route:
    adapter: str
    by: str  # "prefix", "rule N" (1-based, in the manifest's order), "classifier", "fallback"
    messages: list[dict]  # the conversation as the adapter gets it (a stripped prefix removed)
    score: float | None = None  # the classifier's probability for its choice

    def info(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "by": self.by, **({"score": self.score} if self.score is not None else {})}


def parse_router(raw: Any, file: Path, names: list[str], default: str) -> RouterSpec:
    """Check a manifest's `router:` section against the set's names (`names`: the base's and the adapters');
    an error names the file and the field (`tasks.yaml: router.rules.1.adapter`)."""
    spec = RouterSpec(file=file, fallback=default)
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping (prefix, rules, classifier, fallback)", where=spec.where())
    unknown = sorted(set(raw) - ROUTER_KEYS)
    if unknown:
        raise ConfigError(f"unknown field '{unknown[0]}'", where=spec.where(unknown[0]),
                          hint=f"a router has: {', '.join(sorted(ROUTER_KEYS))}")
    folder = file.resolve().parent

    def known(name: Any, *keys: str | int) -> str:
        if not isinstance(name, str) or name not in names:
            raise ConfigError(f"{name!r} is not an adapter of this set", where=spec.where(*keys),
                              hint=f"one of: {', '.join(names)}")
        return name

    prefix = raw.get("prefix")
    if prefix is True:
        prefix = "strip"
    if prefix not in (None, False) and prefix not in PREFIX_MODES:
        raise ConfigError(f"must be strip or keep, got {prefix!r}", where=spec.where("prefix"))
    spec.prefix = prefix or None
    rules = raw.get("rules") or []
    if not isinstance(rules, list):
        raise ConfigError("must be a list of rules (adapter, and keywords or regex)", where=spec.where("rules"))
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise ConfigError("a rule is a mapping with 'adapter' and 'keywords' or 'regex'",
                              where=spec.where("rules", index))
        bad = sorted(set(rule) - RULE_KEYS)
        if bad:
            raise ConfigError(f"unknown field '{bad[0]}'", where=spec.where("rules", index, bad[0]),
                              hint=f"a rule has: {', '.join(sorted(RULE_KEYS))}")
        adapter = known(rule.get("adapter"), "rules", index, "adapter")
        if ("keywords" in rule) == ("regex" in rule):
            raise ConfigError("give either 'keywords' or 'regex'", where=spec.where("rules", index))
        if "keywords" in rule:
            words = rule["keywords"]
            words = [words] if isinstance(words, str) else words
            if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise ConfigError("must be a non-empty list of words", where=spec.where("rules", index, "keywords"))
            # Whole words: "order" must not fire on "border". Lookarounds, not \b, so "c++" works as a keyword.
            source = "|".join(re.escape(w.strip()) for w in words)
            text = rf"(?<!\w)(?:{source})(?!\w)"
            shown = ", ".join(words)
        else:
            text = rule["regex"]
            if not isinstance(text, str) or not text:
                raise ConfigError("must be a regular expression", where=spec.where("rules", index, "regex"))
            shown = text
        try:
            pattern = re.compile(text, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"not a valid regular expression: {exc}",
                              where=spec.where("rules", index, "regex")) from None
        spec.rules.append(Rule(adapter, pattern, shown))
    classifier = raw.get("classifier")
    if classifier is not None:
        if not isinstance(classifier, str) or not classifier.strip():
            raise ConfigError("must name a classification run folder", where=spec.where("classifier"))
        spec.classifier, spec.classifier_labels = _check_classifier(classifier, folder, names, spec)
    min_score = raw.get("min_score", 0.0)
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0 <= min_score <= 1:
        raise ConfigError(f"must be a number from 0 to 1, got {min_score!r}", where=spec.where("min_score"))
    spec.min_score = float(min_score)
    if raw.get("fallback") is not None:
        spec.fallback = known(raw["fallback"], "fallback")
    if raw.get("eval_data") is not None:
        if not isinstance(raw["eval_data"], str):
            raise ConfigError("must be a file of labelled prompts", where=spec.where("eval_data"))
        spec.eval_data = _path(raw["eval_data"], folder)
    if not (spec.prefix or spec.rules or spec.classifier):
        raise ConfigError("a router needs at least one of prefix, rules or classifier", where=spec.where())
    return spec


def _path(text: str, folder: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else folder / path


def _check_classifier(text: str, folder: Path, names: list[str], spec: RouterSpec) -> tuple[Path, list[str]]:
    """A classification run whose labels are all names of the set (nothing heavy loads here)."""
    from ..models.loading import read_run_meta

    path = _path(text, folder).resolve()
    where = spec.where("classifier")
    if not path.is_dir():
        raise ConfigError(f"classifier run folder not found: {path}", where=where,
                          hint="paths are read from the manifest's folder")
    meta = read_run_meta(path)
    if meta is None or meta.get("task") != "classification":
        raise ConfigError(f"{path} is not a tunesmith classification run", where=where,
                          hint="train one with `task: classification` on labelled prompts whose labels are the "
                               "adapter names (docs/multitask.md)")
    labels = [str(label) for label in meta.get("label_names") or []]
    strangers = [label for label in labels if label not in names]
    if strangers:
        raise ConfigError(f"the classifier's label '{strangers[0]}' is not an adapter of this set", where=where,
                          hint=f"its labels must be among: {', '.join(names)}")
    return path, labels


def last_user_text(messages: list[dict]) -> tuple[int, str]:
    """The index and text of the last user message (-1, "" when there is none)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            content = messages[index].get("content")
            return index, content if isinstance(content, str) else ""
    return -1, ""


class Router:
    """Routes conversations as a `RouterSpec` says. `classify`: texts → [{"label", "score"}, ...], attached when the
    spec has a classifier (loaded once, used for every request)."""

    def __init__(self, spec: RouterSpec, names: list[str] | Callable[[], list[str]],
                 classify: Callable[[list[str]], list[dict]] | None = None):
        """`names`: what a prefix may name; a callable for a set that changes while serving."""
        if spec.classifier is not None and classify is None:
            raise ValueError("the router's classifier is not loaded: use tunesmith.api.load_router")
        self.spec, self.classify = spec, classify
        self._names = names if callable(names) else (lambda: list(names))

    def route(self, messages: list[dict]) -> Route:
        return self.route_many([messages])[0]

    def route_many(self, conversations: list[list[dict]]) -> list[Route]:
        """Every conversation's route; the classifier sees the undecided ones in one call."""
        routes: list[Route | None] = []
        pending: list[tuple[int, str]] = []
        for number, messages in enumerate(conversations):
            route, text = self._by_text(messages)
            routes.append(route)
            if route is None:
                pending.append((number, text))
        if pending and self.classify is not None:
            for (number, _), result in zip(pending, self.classify([text for _, text in pending])):
                if result["score"] >= self.spec.min_score:
                    routes[number] = Route(result["label"], "classifier", conversations[number],
                                           float(result["score"]))
        return [route or Route(self.spec.fallback, "fallback", messages)
                for route, messages in zip(routes, conversations)]

    def _by_text(self, messages: list[dict]) -> tuple[Route | None, str]:
        index, text = last_user_text(messages)
        if self.spec.prefix and (match := PREFIX.match(text)):
            # A prefix is matched without regard to case; one naming no adapter is part of the text.
            name = {n.lower(): n for n in self._names()}.get((match["bracket"] or match["colon"]).lower())
            if name is not None:
                if self.spec.prefix == "strip":
                    messages = [*messages[:index], {**messages[index], "content": text[match.end():]},
                                *messages[index + 1:]]
                return Route(name, "prefix", messages), text
        for number, rule in enumerate(self.spec.rules, 1):
            if rule.pattern.search(text):
                return Route(rule.adapter, f"rule {number}", messages), text
        return None, text


# ----------------------------------------------------------------------------------------------------- evaluation

def read_labelled(path: str | Path, names: list[str]) -> list[tuple[list[dict], str, int | None]]:
    """Labelled prompts for the router's accuracy: records with the prompt (`prompt`, `text` or `messages`) and the
    right adapter (`adapter`, or `label`). A missing or unknown label is an error naming the file and line."""
    from ..data.readers import read_records

    items = []
    for record in read_records(str(path)):
        data = record.data
        key = "adapter" if "adapter" in data else "label"
        label = data.get(key)
        if not isinstance(label, str) or not label:
            raise DataError("a labelled prompt needs its adapter's name in 'adapter' (or 'label')", file=record.file,
                            line=record.line, field="adapter")
        if label not in names:
            raise DataError(f"unknown label '{label}': not an adapter of the set", file=record.file,
                            line=record.line, field=key, hint=f"one of: {', '.join(names)}")
        text = data.get("prompt", data.get("text"))
        if isinstance(text, str):
            messages = [{"role": "user", "content": text}]
        elif isinstance(data.get("messages"), list) and last_user_text(data["messages"])[0] >= 0:
            messages = data["messages"]
        else:
            raise DataError("a labelled prompt needs 'prompt', 'text' or 'messages' with a user message",
                            file=record.file, line=record.line)
        items.append((messages, label, record.line))
    if not items:
        raise DataError("no labelled prompts", file=str(path))
    return items


def evaluate_router(router: Router, path: str | Path, names: list[str]) -> dict:
    """Accuracy, confusion matrix (rows: the right adapter, columns: the routed one) and the misrouted prompts."""
    items = read_labelled(path, names)
    routes = router.route_many([messages for messages, _, _ in items])
    index = {name: i for i, name in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    by: dict[str, int] = {}
    wrong = []
    for (messages, label, line), route in zip(items, routes):
        matrix[index[label]][index[route.adapter]] += 1
        step = route.by.split()[0]
        by[step] = by.get(step, 0) + 1
        if route.adapter != label:
            wrong.append({"line": line, "text": last_user_text(messages)[1], "label": label, **route.info()})
    correct = sum(matrix[i][i] for i in range(len(names)))
    return {"data": str(path), "samples": len(items), "correct": correct, "accuracy": correct / len(items),
            "labels": names, "confusion_matrix": matrix, "by": by, "misrouted": wrong}


def router_report_md(result: dict) -> str:
    """The router's accuracy as Markdown: the headline, the confusion table, the misrouted prompts."""
    names, matrix = result["labels"], result["confusion_matrix"]
    lines = [f"# Router accuracy: {result['data']}", "",
             f"accuracy **{result['accuracy']:.4f}** ({result['correct']} of {result['samples']} prompts routed to "
             f"their labelled adapter)", "",
             "decided by: " + ", ".join(f"{step} {count}" for step, count in result["by"].items()), "",
             "| true \\ routed | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
             *[f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(names, matrix)]]
    if result["misrouted"]:
        lines += ["", "## Misrouted", "", "| line | label | routed | by | text |", "|---|---|---|---|---|"]
        for row in result["misrouted"]:
            text = row["text"].replace("|", "\\|").replace("\n", " ")[:80]
            lines.append(f"| {row['line']} | {row['label']} | {row['adapter']} | {row['by']} | {text} |")
    return "\n".join(lines) + "\n"
