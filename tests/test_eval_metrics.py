"""Evaluation metrics against values computed by hand: perplexity, exact match, ROUGE-L, BLEU, chrF, instruction
checks, classification, judge score parsing, forgetting rate."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.data.encoding import IGNORE_INDEX
from tunesmith.errors import ConfigError
from tunesmith.evaluation.forgetting import forgetting_rate, forgetting_rows
from tunesmith.evaluation.metrics import generation as gen
from tunesmith.evaluation.metrics.classification import UNPARSED, classification_scores, parse_label
from tunesmith.evaluation.metrics.instruction import check_name, run_check, validate_check
from tunesmith.evaluation.metrics.judge import parse_score
from tunesmith.evaluation.metrics.perplexity import score_examples, text_examples


# --- perplexity -------------------------------------------------------------------------------------------------

class Bigram(torch.nn.Module):
    """logits at position t = TABLE[input_ids[t]]: every probability is known in closed form."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float))

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table[input_ids]})()


# Vocabulary of 3. After token 0: p(1) = e^2 / (e^2 + 2); after token 1: uniform; after token 2: p(0) = 1/2.
TABLE = [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]]


def _nll(prev, nxt):
    row = TABLE[prev]
    return -(row[nxt] - math.log(sum(math.exp(v) for v in row)))


def test_perplexity_is_exp_of_mean_token_nll_over_scored_tokens_only():
    examples = [([0, 1, 2, 0], [0, 1, 2, 0]),                       # text: every next token scored
                ([0, 1, 0], [IGNORE_INDEX, IGNORE_INDEX, 0])]        # instruction: only the response token
    expected_nll = [_nll(0, 1), _nll(1, 2), _nll(2, 0), _nll(1, 0)]
    # batch_size=2 pads the shorter example: padding must not change the result.
    for batch_size in (1, 2):
        scores = score_examples(Bigram(TABLE), examples, pad_id=2, batch_size=batch_size)
        assert scores["tokens"] == 4
        assert scores["loss"] == pytest.approx(sum(expected_nll) / 4, rel=1e-6)
        assert scores["perplexity"] == pytest.approx(math.exp(sum(expected_nll) / 4), rel=1e-6)
    uniform = score_examples(Bigram([[0.0] * 3] * 3), examples)
    assert uniform["perplexity"] == pytest.approx(3.0)  # a uniform model over 3 tokens has perplexity 3


def test_text_examples_window_long_texts(stories_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    text = "Once upon a time there was a little girl who liked to play in the park with her dog."
    ids = tokenizer(text)["input_ids"]
    windows = text_examples(tokenizer, [text], max_length=8)
    assert [w for w, _ in windows] == [ids[i:i + 8] for i in range(0, len(ids), 8) if len(ids[i:i + 8]) > 1]
    assert all(ids_ == labels for ids_, labels in windows)
    assert text_examples(tokenizer, [text], max_length=8, max_windows=2) == windows[:2]


# --- generation metrics ------------------------------------------------------------------------------------------

def test_exact_match_normalises_case_space_and_outer_punctuation():
    assert gen.exact_match("  Paris. ", "paris") == 1.0
    assert gen.exact_match("Paris is", "Paris") == 0.0
    assert gen.generation_scores(["Paris.", "Rome"], ["paris", "Milan"], ["exact_match"]) == {"exact_match": 0.5}


def test_rouge_l_by_hand():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" = "the cat on the mat": 5 of 6 tokens each side.
    assert gen.rouge_l("The cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # Unequal lengths: LCS 2, precision 2/2, recall 2/4 -> F1 = 2/3.
    assert gen.rouge_l("cat mat", "the cat on mat") == pytest.approx(2 / 3)
    # Chinese is scored per character: 我爱 in common, 2 of 4 -> 0.5 (a [a-z0-9] tokenizer would give 0).
    assert gen.rouge_l("我爱北京", "我爱上海") == pytest.approx(0.5)
    assert gen.rouge_l("", "") == 1.0 and gen.rouge_l("x", "") == 0.0


def test_bleu_by_hand_with_exp_smoothing():
    # n-gram precisions 5/6, 3/5, 1/4, 0/3 (smoothed to 1/(2*3)); equal lengths, so no brevity penalty.
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert gen.bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(expected, rel=1e-6)
    assert gen.bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(1.0)
    # CJK references switch to the zh tokenizer (a token per character): 2/4, 1/3, 0/2 -> 1/4, 0/1 -> 1/4.
    assert gen.bleu(["我爱北京"], ["我爱上海"]) == pytest.approx((1 / 2 * 1 / 3 * 1 / 4 * 1 / 4) ** 0.25, rel=1e-6)


def test_chrf_by_hand():
    # "ab" vs "abc": 1-grams P 2/2 R 2/3, 2-grams P 1/1 R 1/2 (3-grams and up: none in the hypothesis).
    # mean P = 1, mean R = 7/12; F_beta with beta=2: 5PR / (4P + R) = 7/11.
    assert gen.chrf(["ab"], ["abc"]) == pytest.approx(7 / 11, rel=1e-6)
    # "abc" vs "abd": P = R = (2/3 + 1/2 + 0) / 3 per order.
    assert gen.chrf(["abc"], ["abd"]) == pytest.approx((2 / 3 + 1 / 2) / 3, rel=1e-6)
    assert gen.chrf(["same text"], ["same text"]) == pytest.approx(1.0)


def test_generation_scores_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        gen.generation_scores(["a", "b"], ["a"])


# --- instruction-following checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, good, bad", [
    ({"type": "json"}, '{"a": 1}', "a: 1"),
    ({"type": "json", "keys": ["name", "age"]}, '```json\n{"name": "x", "age": 3}\n```', '{"name": "x"}'),
    ({"type": "keywords", "words": ["Paris", "tower"]}, "paris has a Tower", "Paris only"),
    ({"type": "forbidden", "words": ["sun"]}, "light from a star", "the Sun shines"),
    ({"type": "language", "lang": "zh"}, "巴黎是法国的首都 (Paris)", "Paris is the capital"),
    ({"type": "language", "lang": "en"}, "Paris is the capital", "巴黎是法国的首都"),
    ({"type": "length", "max_words": 3}, "one two three", "one two three four"),
    ({"type": "length", "min_words": 2, "max_chars": 6}, "我爱", "我"),  # a CJK character is a word
    ({"type": "starts_with", "text": "yes"}, "  Yes, because", "No."),
    ({"type": "ends_with", "text": "That is all."}, "Hello. that is all.", "That is all. Bye"),
    ({"type": "regex", "pattern": r"^\d{3}$"}, "abc\n123", "1234"),
    ({"type": "bullets", "count": 3}, "- a\n* b\n1. c", "- a\n- b"),
    ({"type": "bullets", "min": 2}, "1) a\n2) b", "just text"),
    ({"type": "lowercase"}, "all lower 123", "Not lower"),
    ({"type": "uppercase"}, "ALL UPPER", "Mixed"),
    ({"type": "no_commas"}, "apples and pears", "apples, pears"),
    ({"type": "no_commas"}, "苹果和梨", "苹果，梨"),
    ({"type": "paragraphs", "count": 2}, "one\n\n  \ntwo", "one\ntwo"),
])
def test_each_check_passes_and_fails(spec, good, bad):
    spec = validate_check(spec, "test")
    assert run_check(spec, good) is True
    assert run_check(spec, bad) is False


def test_check_specs_are_validated_with_the_field_named():
    assert validate_check("lowercase", "x") == {"type": "lowercase"}
    assert check_name({"type": "length", "max_words": 5}) == "length(max_words=5)"
    for spec, message in [({"type": "colour"}, "unknown check type 'colour'"),
                          ({"type": "keywords"}, "missing a required argument: 'words'"),
                          ({"type": "length", "max_word": 3}, "unexpected keyword argument 'max_word'"),
                          ({"type": "language", "lang": "xx"}, "unknown language 'xx'"),
                          ({"type": "regex", "pattern": "("}, "bad regular expression"),
                          (["json"], "a check is a mapping")]:
        with pytest.raises(ConfigError, match=message) as info:
            validate_check(spec, "suite.yaml: tasks 'qa' checks[0]")
        assert info.value.where == "suite.yaml: tasks 'qa' checks[0]"


# --- classification ----------------------------------------------------------------------------------------------

def test_parse_label():
    labels = ["positive", "negative", "very positive"]
    assert parse_label("It is NEGATIVE, not positive", labels) == "negative"  # earliest occurrence
    assert parse_label("Very positive indeed", labels) == "very positive"     # longer label on a tie
    assert parse_label("positively great", labels) == UNPARSED                # whole words only
    assert parse_label("这是正面评价", ["正面", "负面"]) == "正面"               # CJK without word boundaries
    assert parse_label("no idea", labels) == UNPARSED


def test_classification_scores_by_hand():
    gold = ["pos", "pos", "neg", "neg"]
    predicted = ["pos", "neg", "neg", UNPARSED]
    s = classification_scores(gold, predicted, ["pos", "neg"])
    assert s["accuracy"] == 0.5 and s["unparsed_rate"] == 0.25
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 1, 1]]
    assert s["matrix_columns"] == ["pos", "neg", UNPARSED]
    # pos: P 1/1, R 1/2, F1 2/3; neg: P 1/2, R 1/2, F1 1/2; macro = 7/12.
    assert s["per_class"]["pos"]["f1"] == pytest.approx(2 / 3)
    assert s["macro_f1"] == pytest.approx(7 / 12)
    with pytest.raises(ValueError, match="not among the labels"):
        classification_scores(["maybe"], ["pos"], ["pos", "neg"])


# --- judge -------------------------------------------------------------------------------------------------------

def test_parse_score():
    assert parse_score("Good answer.\nScore: 8", 10) == 8
    assert parse_score("score: 3 at first... Score: **7**", 10) == 7     # the last one counts
    assert parse_score("I give it 4/5", 5) == 4
    assert parse_score("I give it 4/5", 10) is None                    # a fraction of another scale is ignored
    assert parse_score("Score: 11", 10) is None and parse_score("no number", 10) is None


# --- forgetting --------------------------------------------------------------------------------------------------

def test_forgetting_rate_and_rows():
    assert forgetting_rate(10.0, 12.0, lower_is_better=True) == pytest.approx(0.2)   # perplexity rose 20%
    assert forgetting_rate(0.8, 0.6, lower_is_better=False) == pytest.approx(0.25)   # accuracy fell a quarter
    assert forgetting_rate(0.8, 0.9, lower_is_better=False) == pytest.approx(-0.125)  # improved: negative
    assert math.isnan(forgetting_rate(0.0, 1.0, lower_is_better=False))

    def result(ppl, acc):
        return {"model": "m", "tasks": {
            "wiki": {"type": "perplexity", "general": True, "metrics": {"loss": math.log(ppl), "perplexity": ppl}},
            "sst2": {"type": "classification", "general": True, "metrics": {"accuracy": acc, "macro_f1": acc}},
            "task": {"type": "perplexity", "general": False, "metrics": {"perplexity": ppl}}}}

    rows = forgetting_rows(result(20.0, 0.9), result(25.0, 0.72))
    assert [(r["task"], r["metric"]) for r in rows] == [("wiki", "perplexity"), ("sst2", "accuracy")]
    assert [r["rate"] for r in rows] == pytest.approx([0.25, 0.2])
