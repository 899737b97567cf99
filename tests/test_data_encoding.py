"""Label masking and truncation on a real tokenizer (stories260K: Llama, byte fallback for Chinese)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.data.encoding import IGNORE_INDEX, encode_conversation
from tunesmith.data.templates import get_template
from tunesmith.errors import DataError

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
CHATML_JINJA = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

ZH = [{"role": "user", "content": "比较两个数", "input": "3 和 5"}, {"role": "assistant", "content": "5 更大。"}]
TWO_TURNS = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there"},
             {"role": "user", "content": "Say bye"}, {"role": "assistant", "content": "Bye now"}]


@pytest.fixture()
def tok():
    if not STORIES.exists():
        pytest.skip(f"stories260K tokenizer not found at {STORIES}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(STORIES)


def _trained(tok, encoded) -> str:
    return tok.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE_INDEX])


def _masked(tok, encoded) -> str:
    return tok.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label == IGNORE_INDEX])


def _runs(encoded) -> int:
    """Number of contiguous supervised stretches."""
    flags = [label != IGNORE_INDEX for label in encoded["labels"]]
    return sum(1 for i, f in enumerate(flags) if f and (i == 0 or not flags[i - 1]))


def test_single_turn_chinese_supervises_reply_and_eos_only(tok):
    encoded = encode_conversation(tok, get_template("alpaca_zh", tok), ZH, max_length=512)
    assert _trained(tok, encoded) == "5 更大。</s>"
    assert encoded["input_ids"].count(tok.bos_token_id) == 1 and encoded["input_ids"][0] == tok.bos_token_id
    assert encoded["labels"][0] == IGNORE_INDEX
    assert "### 回复:" in _masked(tok, encoded) and "3 和 5" in _masked(tok, encoded)
    assert encoded["labels"][-1] == tok.eos_token_id
    assert encoded["length"] == len(encoded["input_ids"]) == len(encoded["labels"])
    assert not encoded["truncated"]


@pytest.mark.parametrize("name", ["alpaca_en", "chatml"])
def test_multi_turn_all_vs_last_assistant(tok, name):
    template = get_template(name, tok)
    end = "</s>" if name == "alpaca_en" else "<|im_end|>"
    every = encode_conversation(tok, template, TWO_TURNS, 512, train_on="all_assistant")
    assert _runs(every) == 2
    assert _trained(tok, every).replace(" ", "") == f"Hithere{end}Byenow{end}"
    assert "Say hi" in _masked(tok, every) and "Say bye" in _masked(tok, every)
    last = encode_conversation(tok, template, TWO_TURNS, 512, train_on="last_assistant")
    assert _runs(last) == 1 and _trained(tok, last) == f"Bye now{end}"
    assert "Hi there" in _masked(tok, last)


def test_model_template_masks_assistant_header(tok):
    tok.chat_template = CHATML_JINJA
    encoded = encode_conversation(tok, get_template("model", tok), TWO_TURNS, 512)
    assert _trained(tok, encoded).replace(" ", "") == "Hithere<|im_end|>Byenow<|im_end|>"
    masked = _masked(tok, encoded)
    assert masked.count("<|im_start|>assistant") == 2 and "<|im_start|>user" in masked


def test_template_with_its_own_bos_is_not_doubled(tok):
    tok.chat_template = "{{ bos_token }}" + CHATML_JINJA
    encoded = encode_conversation(tok, get_template("model", tok), TWO_TURNS, 512)
    assert encoded["input_ids"].count(tok.bos_token_id) == 1


def test_long_prompt_is_cut_and_whole_reply_kept(tok):
    messages = [{"role": "user", "content": "Tell me the end of the story.",
                 "input": " ".join(["Once upon a time there was a little dog."] * 40)},
                {"role": "assistant", "content": "The dog went home happy."}]
    template = get_template("alpaca_en", tok)
    full = encode_conversation(tok, template, messages, 4096)
    encoded = encode_conversation(tok, template, messages, 128)
    assert full["length"] > 128 and encoded["length"] == 128 and encoded["truncated"]
    assert _trained(tok, encoded) == "The dog went home happy.</s>"
    prompt = _masked(tok, encoded)
    # The instruction and the start of the input survive; the input's end is cut; all headers survive.
    assert prompt.startswith("<s> ### Instruction:\nTell me the end of the story.\n\n### Input:\nOnce upon a time")
    assert prompt.endswith("\n\n### Response:\n")
    assert prompt.count("little dog") < 40


def test_multi_turn_truncation_drops_earliest_exchange(tok):
    template = get_template("chatml", tok)
    full = encode_conversation(tok, template, TWO_TURNS, 4096)
    last_only = encode_conversation(tok, template, TWO_TURNS[2:], 4096)
    encoded = encode_conversation(tok, template, TWO_TURNS, full["length"] - 1)
    assert encoded["input_ids"] == last_only["input_ids"] and encoded["truncated"]
    assert _trained(tok, encoded) == "Bye now<|im_end|>"


def test_reply_too_long_keeps_its_start(tok):
    messages = [{"role": "user", "content": "Tell a story."},
                {"role": "assistant", "content": " ".join(["The cat sat on the mat."] * 60)}]
    encoded = encode_conversation(tok, get_template("alpaca_en", tok), messages, 48)
    assert encoded["length"] == 48 and encoded["truncated"]
    assert _trained(tok, encoded).startswith("The cat sat")
    assert "### Response:" in _masked(tok, encoded)


def test_nothing_trainable_fits_returns_none(tok):
    messages = [{"role": "system", "content": "A long system prompt that cannot be cut. " * 5},
                {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert encode_conversation(tok, get_template("chatml", tok), messages, 32) is None


class _ShiftedOffsets:
    """A tokenizer whose character offsets are wrong: the mask check must notice."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, **kwargs):
        encoded = self._tok(text, **kwargs)
        encoded["offset_mapping"] = [(a - 6, b - 6) if b > a else (a, b) for a, b in encoded["offset_mapping"]]
        return encoded


def test_mask_check_catches_wrong_offsets(tok):
    with pytest.raises(DataError, match="label mask"):
        encode_conversation(_ShiftedOffsets(tok), get_template("alpaca_en", tok), TWO_TURNS[:2], 512)
