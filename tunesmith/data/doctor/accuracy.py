"""Accuracy heuristics: replies that cannot be right whatever the question was.

Content-free or very short replies, placeholders, truncated endings, a reply in another language than the
instruction, boilerplate refusals, chat-template tokens leaking into the text, instructions that point at an
input that is missing, and replies that only repeat the prompt. All rules are lexical (no model), so each finding
says which rule fired and on what text.
"""

from __future__ import annotations

import re

from .base import Finding, Sample, Section, flagged_rate
from .diversity import task_type
from .text import CJK_CHAR, language, looks_like_code, script_counts, strip_code, units

PLACEHOLDER = re.compile(r"\bTODO\b|\bTBD\b|\bFIXME\b|\bXXX+\b|lorem ipsum|\[(insert|your|placeholder|name)[^\]]*\]|"
                         r"<placeholder>|\{\{\s*\w+\s*\}\}|待补充|待完善|待填写|待定|此处填写|此处省略|（略）|\(略\)|"
                         r"\[待.*?\]|【待.*?】", re.I)
REFUSAL = re.compile(r"as an ai( language)? model|i'?m sorry,? but i (can(not|'t)|am (unable|not able))|"
                     r"i (cannot|can't|am unable to|am not able to) (help|assist|provide|answer|fulfill|comply)|"
                     r"as a language model|i do not have (access|the ability)|"
                     # 作为一个AI… only as an opening disclaimer clause ("作为一个人工智能助手，我…"), not inside a
                     # sentence about the assistant ("你作为一个人工智能助手并没有…")
                     r"(?<!你)作为一个?(AI|人工智能|语言模型)(助手|语言模型|模型|程序)?[，,]|"
                     r"我(只是|是)一个?(AI|人工智能)(语言模型|助手)?[，,]?(无法|不能)|"
                     r"(抱歉|对不起)[，,]?我(无法|不能)|我无法(回答|提供|完成|访问|执行)|"
                     r"(您|你)(没有|并没有|未)提供", re.I)
TEMPLATE_TOKEN = re.compile(r"<\|(im_start|im_end|endoftext|eot_id|start_header_id|end_header_id|begin_of_text|"
                            r"user|assistant|system|end)\|>|</?s>|\[/?INST\]|<<SYS>>|<start_of_turn>|<end_of_turn>|"
                            r"^### (Instruction|Response|Input|指令|回复|回答|输入)[:：]", re.M)
# "a given year" / "any given day" is generic, not a pointer at an input
REFERS_TO_INPUT = re.compile(r"以下|下面|下列|给定|这段|这篇|这句|该文|所给|上述|the following|(?<!\ba )(?<!\bany )given|"
                             r"below|this (text|passage|article|sentence|paragraph|code|poem|story)|provided", re.I)
# Code tasks name their parameters this way ("a function that checks a given number", "计算给定数字的阶乘").
GENERIC_IN_CODE = re.compile(r"给定|given", re.I)
ASKS_FOR_TEXT = re.compile(r"^(请|帮我)?(写|撰写|创作|解释|描述|阐述|介绍|总结|概括)|^(please )?(write|compose|explain|"
                           r"describe|summari[sz]e|elaborate|discuss)\b", re.I)
ASKS_FOR_TEMPLATE = re.compile(r"template|模板|模版|form letter|fill[- ]in", re.I)
# Replies whose shortness was asked for: "in 3 words", "one word", "用一个词".
ASKS_FOR_FEW_WORDS = re.compile(r"\bin (one|a single|two|three|four|five|\d+) words?\b|\bone[- ]word\b|\b(a|one) "
                                r"(single )?(word|phrase)\b|\d+ words or (less|fewer)|一个词|一句话|一个字|"
                                r"[一二三四五两\d]+个(字|词)", re.I)
ASKS_OTHER_LANGUAGE = re.compile(r"英文|英语|中文|汉语|English|Chinese|in French|in Spanish|in German|日语|法语", re.I)
MIXED_REPLY_SHARE = 0.2  # a reply with this share of the prompt's language is mixed, not in the other language


def check_accuracy(samples: list[Sample], *, min_output_units: int = 5, truncation_min_chars: int = 120) -> Section:
    section = Section("accuracy")
    for sample in samples:
        section.findings += _sample_findings(sample, min_output_units, truncation_min_chars)
    counts: dict[str, int] = {}
    for finding in section.findings:
        counts[finding.check.split(".", 1)[1]] = counts.get(finding.check.split(".", 1)[1], 0) + 1
    section.metrics = {"flagged": len({f.sample for f in section.findings}),
                       "flagged_rate": flagged_rate(section.findings, len(samples)), "by_check": counts}
    section.charts["accuracy findings"] = counts
    return section


def reply_problems(prompt: str, reply: str, *, min_output_units: int = 5, truncation_min_chars: int = 120,
                   input_text: str = "") -> list[tuple[str, str, str]]:
    """(check, severity, message) for one prompt/reply pair; also the output filter of data generation."""
    found: list[tuple[str, str, str]] = []
    content = units(reply)
    if not content:
        return [("empty_output", "error", "reply has no words (only spaces, punctuation or symbols)")]
    if len(content) < min_output_units and ASKS_FOR_TEXT.search(prompt) and not ASKS_FOR_FEW_WORDS.search(prompt):
        found.append(("short_output", "warning", f"reply is very short ({reply.strip()!r}) for what was asked"))
    if (match := PLACEHOLDER.search(reply)) and not ASKS_FOR_TEMPLATE.search(prompt):
        found.append(("placeholder", "warning", f"placeholder {match.group(0)!r} left in the reply"))
    if ending := truncated_ending(reply, truncation_min_chars):
        found.append(("truncated", "warning", f"reply looks cut off: ends with {ending!r}"))
    if match := REFUSAL.search(reply):
        found.append(("refusal", "warning", f"boilerplate refusal/disclaimer: {match.group(0)!r}"))
    if match := TEMPLATE_TOKEN.search(reply):
        found.append(("template_leak", "error", f"chat-template token {match.group(0).strip()!r} in the reply"))
    if mismatch := _language_mismatch(prompt, input_text, reply):
        found.append(("language_mismatch", "warning", mismatch))
    if reply.strip() == prompt.strip() and len(content) > 3:
        found.append(("echo", "warning", "reply only repeats the prompt"))
    return found


def truncated_ending(reply: str, min_chars: int = 120) -> str | None:
    """The tail that makes `reply` look cut off, or None. A trailing comma/colon/conjunction mark always counts;
    a missing final punctuation mark counts only for long prose whose last line is a sentence (not a list
    item, heading, table row or code)."""
    text = reply.rstrip()
    if looks_like_code(text):
        return None
    # An ellipsis is left out on purpose: "3+4, 7+4, ..." ends lists legitimately; a reply cut by a token limit
    # stops mid-word and is caught by the prose rule below.
    if text.endswith(("，", ",", "、", "：", ":", "；", ";", "（", "(")):
        return text[-12:]
    if len(text) < min_chars:
        return None
    last_line = text.splitlines()[-1].strip()
    if not (text[-1].isalpha() or CJK_CHAR.match(text[-1])) or len(last_line) < 40 \
            or re.match(r"([-*•#|]|\d+[.、)])", last_line) or re.search(r"#\w+$", last_line):
        return None
    return text[-12:]


def _language_mismatch(prompt: str, input_text: str, reply: str) -> str | None:
    """A reply (almost) entirely in the other language. Mixed replies pass: a Chinese answer listing English
    names (哈利波特角色: Harry Potter, ...) is in Chinese. Prompts that carry material in the reply's language
    (用“shimmer”、“keepsake”造句; "watch" 的复数) may be answered in it."""
    asked = language(prompt)
    answered = language(reply)
    if not asked or not answered or asked == answered or looks_like_code(reply):
        return None
    if task_type(prompt) == "translation" or ASKS_OTHER_LANGUAGE.search(prompt):
        return None
    if input_text and language(input_text) == answered:
        return None
    reply_cjk, reply_latin = script_counts(reply)
    prompt_cjk, prompt_latin = script_counts(prompt)
    own_share = (reply_cjk if asked == "zh" else reply_latin) / (reply_cjk + reply_latin)
    carried = prompt_latin >= 2 if answered == "en" else prompt_cjk >= 4
    if own_share >= MIXED_REPLY_SHARE or carried:
        return None
    names = {"zh": "Chinese", "en": "English"}
    return f"reply is in {names[answered]} but the prompt is in {names[asked]}"


def _sample_findings(sample: Sample, min_units: int, trunc_chars: int) -> list[Finding]:
    findings = []
    last = len(sample.messages) - 1
    # A KTO reply labelled undesirable is meant to be bad: the heuristics would only restate its label.
    undesirable = getattr(sample.preference, "label", True) is False
    for position, message in enumerate(sample.messages):
        if message["role"] != "assistant" or (undesirable and position == last):
            continue
        prompt_msg = sample.messages[position - 1]
        prompt = prompt_msg["content"] + ("\n\n" + prompt_msg["input"] if prompt_msg.get("input") else "")
        field = _reply_field(sample, position, last)
        for check, severity, text in reply_problems(prompt, message["content"], min_output_units=min_units,
                                                    truncation_min_chars=trunc_chars,
                                                    input_text=prompt_msg.get("input") or ""):
            findings.append(Finding.at(sample, f"accuracy.{check}", severity, text, field))
    for message in sample.messages:
        if message["role"] in ("user", "system") and (match := TEMPLATE_TOKEN.search(message["content"])):
            findings.append(Finding.at(sample, "accuracy.template_leak", "error",
                                       f"chat-template token {match.group(0).strip()!r} in a {message['role']} turn"))
    if not sample.input and _refers_to_input(sample.instruction) and _nothing_follows(sample.instruction):
        findings.append(Finding.at(sample, "accuracy.missing_input", "warning",
                                   "instruction refers to a text ('the following', '以下', ...) but none is given",
                                   "input"))
    return findings


def _refers_to_input(instruction: str) -> bool:
    pointers = [m.group(0) for m in REFERS_TO_INPUT.finditer(instruction)]
    if pointers and task_type(instruction) == "code":
        pointers = [p for p in pointers if not GENERIC_IN_CODE.fullmatch(p)]
    return bool(pointers)


def _nothing_follows(instruction: str) -> bool:
    """True when no quoted or colon-introduced material follows in the instruction itself."""
    text = strip_code(instruction).strip()
    if len([part for part in re.split(r"[。！？.!?]", text) if part.strip()]) > 1 or " - " in text:
        return False
    if re.search(r"[:：]\s*\S.", text) or re.search(r"[\"“「《'‘].+?[\"”」》'’]", text) or "\n" in text:
        return False
    return len(text) < 80


def _reply_field(sample: Sample, position: int, last: int) -> str:
    if sample.fmt == "alpaca":
        return "output" if position == last else "history"
    if position == last and "chosen" in sample.raw:  # preference records: the reply checked is the chosen one
        return "chosen"
    if position == last and "completion" in sample.raw:  # KTO in TRL's prompt / completion / label shape
        return "completion"
    key = "messages" if sample.fmt == "openai" else "conversations"
    offset = 1 if sample.messages[0]["role"] == "system" and "system" not in sample.raw else 0
    return f"{key}[{position - offset}]" if key in sample.raw else "chosen"
