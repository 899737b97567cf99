"""Prompt templates: exact renderings, trained spans, inference prompts, registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.data.templates import available_templates, get_template
from tunesmith.errors import ConfigError, DataError

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
CHATML_JINJA = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

ONE_TURN = [{"role": "user", "content": "比较两个数", "input": "3 和 5"}, {"role": "assistant", "content": "5 更大"}]
TWO_TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "again"},
             {"role": "assistant", "content": "Yes"}]


@pytest.fixture()
def tok():
    if not STORIES.exists():
        pytest.skip(f"stories260K tokenizer not found at {STORIES}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(STORIES)


def _trained(rendered) -> list[str]:
    return [rendered.text[a:b] for a, b in rendered.assistant_spans]


def test_registry_lists_builtins_and_rejects_unknown(tok):
    assert {"alpaca_zh", "alpaca_en", "chatml", "model"} <= set(available_templates())
    with pytest.raises(ConfigError, match="unknown template"):
        get_template("vicuna", tok)


def test_auto_resolves_by_chat_template(tok):
    assert get_template("auto", tok).name == "alpaca_en"
    tok.chat_template = CHATML_JINJA
    assert get_template("auto", tok).name == "model"


def test_model_template_needs_a_chat_template(tok):
    with pytest.raises(ConfigError, match="chat template"):
        get_template("model", tok)


def test_alpaca_zh_single_turn_with_input(tok):
    rendered = get_template("alpaca_zh", tok).render(ONE_TURN)
    assert rendered.text == "### 指令:\n比较两个数\n\n### 输入:\n3 和 5\n\n### 回复:\n5 更大</s>"
    assert _trained(rendered) == ["5 更大</s>"]


def test_alpaca_zh_omits_input_section_and_puts_system_first(tok):
    messages = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！"}]
    text = get_template("alpaca_zh", tok).render(messages).text
    assert text == "你是助手。\n\n### 指令:\n你好\n\n### 回复:\n你好！</s>"


def test_alpaca_en_multi_turn_repeats_sections(tok):
    template = get_template("alpaca_en", tok)
    rendered = template.render(TWO_TURNS)
    assert rendered.text == ("Be brief.\n\n### Instruction:\nhi\n\n### Response:\nHello</s>"
                             "\n\n### Instruction:\nagain\n\n### Response:\nYes</s>")
    assert _trained(rendered) == ["Hello</s>", "Yes</s>"]
    assert template.render_prompt(TWO_TURNS[:4]).endswith("### Instruction:\nagain\n\n### Response:\n")
    assert "### Instruction:" in template.stop_strings


def test_chatml_rendering_spans_and_prompt(tok):
    template = get_template("chatml", tok)
    rendered = template.render(TWO_TURNS)
    assert rendered.text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                             "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n"
                             "<|im_start|>assistant\nYes<|im_end|>\n")
    assert _trained(rendered) == ["Hello<|im_end|>", "Yes<|im_end|>"]
    assert template.render_prompt(TWO_TURNS[:2]).endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert template.stop_strings == ["<|im_end|>"]


def test_user_input_joined_for_chat_templates(tok):
    rendered = get_template("chatml", tok).render(ONE_TURN)
    assert "<|im_start|>user\n比较两个数\n\n3 和 5<|im_end|>" in rendered.text
    assert [rendered.text[a:b] for a, b in rendered.user_spans] == ["比较两个数\n\n3 和 5"]


def test_model_template_finds_assistant_spans_by_prefix(tok):
    tok.chat_template = CHATML_JINJA
    template = get_template("model", tok)
    rendered = template.render(TWO_TURNS)
    assert rendered.text == get_template("chatml", tok).render(TWO_TURNS).text
    assert _trained(rendered) == ["Hello<|im_end|>", "Yes<|im_end|>"]
    assert template.render_prompt(TWO_TURNS[:2]).endswith("<|im_start|>assistant\n")
    assert template.stop_strings[0] == "<|im_end|>"


def test_model_template_that_is_not_prefix_consistent_is_rejected(tok):
    # Renders the turn count up front, so earlier renderings are not prefixes of later ones.
    tok.chat_template = "{{ messages|length }}:" + CHATML_JINJA
    with pytest.raises(DataError, match="prefix-consistent"):
        get_template("model", tok).render(TWO_TURNS)


def test_model_template_errors_become_data_errors(tok):
    tok.chat_template = "{{ raise_exception('System role not supported') }}"
    with pytest.raises(DataError, match="System role not supported"):
        get_template("model", tok).render(TWO_TURNS)
