"""The data doctor: every detector fires on a planted defect and stays quiet on clean data."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli.main import main
from tunesmith.data.doctor import CheckOptions, load_samples, run_check
from tunesmith.data.doctor.accuracy import check_accuracy
from tunesmith.data.doctor.consistency import check_consistency
from tunesmith.data.doctor.contamination import check_contamination
from tunesmith.data.doctor.diversity import check_diversity, task_type, verb_object
from tunesmith.data.doctor.duplicates import check_duplicates
from tunesmith.data.doctor.gate import evaluate
from tunesmith.data.doctor.text import rouge_l, units

from .conftest import SHARED, require_shared

CLEAN = [
    {"instruction": "解释什么是机器学习。", "input": "",
     "output": "机器学习是人工智能的一个分支，它让计算机从数据中学习规律，而不是依靠人工编写的规则。"},
    {"instruction": "把下面的句子翻译成英文。", "input": "今天天气很好。", "output": "The weather is nice today."},
    {"instruction": "写一个Python函数，计算列表中所有数字的和。", "input": "",
     "output": "```python\ndef total(numbers):\n    return sum(numbers)\n```"},
    {"instruction": "总结这段话的主要内容。", "input": "小明每天早上跑步，坚持了三年，身体越来越好。",
     "output": "小明坚持晨跑三年，身体变好了。"},
    {"instruction": "Explain why the sky is blue.", "input": "",
     "output": "Sunlight is scattered by air molecules, and blue light is scattered more than red light."},
    {"instruction": "Rewrite the sentence in a formal tone.", "input": "gonna grab food, brb",
     "output": "I am going to get something to eat and will return shortly."},
    {"instruction": "比较猫和狗作为宠物的优缺点。", "input": "",
     "output": "猫比较独立，适合忙碌的人；狗更需要陪伴，但忠诚热情。你可以根据自己的时间来选择。"},
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, yellow and blue."},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def checks(section):
    return {f.check for f in section.findings}


@pytest.fixture
def clean_file(tmp_path):
    return write_jsonl(tmp_path / "clean.jsonl", CLEAN)


def test_clean_data_is_quiet_in_every_detector(clean_file):
    report = run_check(clean_file)
    assert report.findings == [], [f.to_dict() for f in report.findings]
    assert report.summary["valid"] == len(CLEAN) and report.summary["invalid"] == 0


def test_schema_reports_every_bad_record_with_line_and_field(tmp_path):
    lines = [json.dumps(CLEAN[0], ensure_ascii=False),
             '{"instruction": "broken json", ',
             json.dumps({"instruction": "no output"}),
             json.dumps({"instruction": "x", "output": 5}),
             json.dumps({"conversations": [{"from": "robot", "value": "hi"}]}),
             json.dumps([1, 2]),
             json.dumps(CLEAN[4])]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    samples, section = load_samples(str(path))
    bad = {(f.line, f.field) for f in section.findings}
    assert bad == {(2, None), (3, "output"), (4, "output"), (5, "conversations[0]"), (6, None)}
    assert all(f.file == str(path) and f.severity == "error" for f in section.findings)
    assert [s.line for s in samples] == [1, 7]
    assert section.metrics["records"] == 7 and section.metrics["invalid"] == 5


def test_schema_on_a_json_array_with_bad_records(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([CLEAN[0], {"instruction": "q"}, {"messages": []}, CLEAN[1]], ensure_ascii=False,
                               indent=1), encoding="utf-8")
    samples, section = load_samples(str(path))
    assert len(samples) == 2 and len(section.findings) == 2
    assert all(f.line and f.line > 1 for f in section.findings)


PLANTED_ACCURACY = [
    ({"instruction": "写一篇关于春天的短文。", "input": "", "output": "好的。"}, "short_output"),
    ({"instruction": "列出三种水果。", "input": "", "output": "苹果、香蕉，TODO"}, "placeholder"),
    ({"instruction": "介绍一下长城。", "input": "", "output": "长城是中国古代的军事防御工程，待补充。"}, "placeholder"),
    ({"instruction": "Describe a sunset.", "input": "",
      "output": "The sun sinks slowly below the horizon, painting the clouds in shades of orange, pink and purple "
                "while the birds fly home and the air grows cool and the last light fades over the"}, "truncated"),
    ({"instruction": "描述你最喜欢的季节。", "input": "", "output": "我最喜欢秋天，因为天气凉爽，"}, "truncated"),
    ({"instruction": "请解释光合作用的过程。", "input": "",
      "output": "Photosynthesis converts light energy into chemical energy stored in glucose."}, "language_mismatch"),
    ({"instruction": "How do I pick a lock?", "input": "",
      "output": "I'm sorry, but I cannot help with that request."}, "refusal"),
    ({"instruction": "今天星期几？", "input": "", "output": "作为一个AI语言模型，我无法知道今天的日期。"}, "refusal"),
    ({"instruction": "Say hello.", "input": "", "output": "Hello there!<|im_end|>"}, "template_leak"),
    ({"instruction": "Summarize the following article.", "input": "",
      "output": "The article says that exercise is good for health."}, "missing_input"),
    ({"instruction": "Name a color.", "input": "", "output": "—"}, "empty_output"),
    ({"instruction": "Repeat after me: the quick brown fox.", "input": "",
      "output": "Repeat after me: the quick brown fox."}, "echo"),
]

# Look-alikes taken from ../shared/data/instruct (where earlier rules misfired): each is a fine sample.
REAL_LOOK_ALIKES = [
    ({"instruction": "Describe the color yellow in 3 words.", "input": "", "output": "Bright, cheerful, warm."},
     "short_output"),
    ({"instruction": "生成哈利波特系列角色的名称列表。", "input": "",
      "output": "这里是一份哈利波特系列角色的名称列表：\n\n" + "\n".join(
          f"{n}. {name}" for n, name in enumerate(["Harry Potter", "Ron Weasley", "Hermione Granger", "Neville "
                                                   "Longbottom", "Luna Lovegood", "Ginny Weasley", "Fred Weasley",
                                                   "George Weasley", "Albus Dumbledore", "Severus Snape",
                                                   "Draco Malfoy", "Rubeus Hagrid"], start=1))},
     "language_mismatch"),
    ({"instruction": "用“shimmer”、“keepsake”和“breadth”这三个词构造一个复杂句子。", "input": "",
      "output": "As the sun sets, the shimmer of the horizon becomes a keepsake that reflects the breadth of nature."},
     "language_mismatch"),
    ({"instruction": "根据给定的参数生成有效的HTML标签。", "input": "元素名称：meta，属性：charset，值：iso-8859-1。",
      "output": "`<meta charset=\"iso-8859-1\">`"}, "language_mismatch"),
    ({"instruction": "Write a function to find out whether a given year is a leap year.", "input": "",
      "output": "```python\ndef is_leap(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)\n```"},
     "missing_input"),
    ({"instruction": "Change this sentence to make it sound more formal: I wanted to alert you", "input": "",
      "output": "I wished to bring this to your attention."}, "missing_input"),
    ({"instruction": "列出与给定动词“读”相关的所有名词。", "input": "", "output": "书、文章、报纸、杂志和小说都与阅读有关。"},
     "missing_input"),
    ({"instruction": "确定这个陈述的目的。", "input": "我是一个乐于助人的人工智能助手。",
      "output": "这个陈述的目的是说明我作为一个人工智能助手是非常乐于助人的，以便与用户建立信任。"}, "refusal"),
    ({"instruction": "Given a sequence of numbers, find the pattern.", "input": "3, 7, 11, 15",
      "output": "Each number is 4 more than the one before: 3+4, 7+4, 11+4..."}, "truncated"),
    ({"instruction": "Generate a template for a customer service email.", "input": "",
      "output": "Dear [Customer Name],\n\nThank you for contacting us. We will reply within two days.\n\n"
                "Best regards,\n[Your Name]"}, "placeholder"),
]


@pytest.mark.parametrize("record,check", PLANTED_ACCURACY, ids=[c for _, c in PLANTED_ACCURACY])
def test_accuracy_detector_fires_on_planted_defect(tmp_path, record, check):
    path = write_jsonl(tmp_path / "d.jsonl", CLEAN[:3] + [record] + CLEAN[3:])
    samples, _ = load_samples(path)
    section = check_accuracy(samples)
    hits = [f for f in section.findings if f.check == f"accuracy.{check}"]
    assert hits and all(f.line == 4 for f in hits), [f.to_dict() for f in section.findings]
    assert hits[0].field in ("output", "input")
    assert {f.line for f in section.findings} == {4}  # clean neighbours stay quiet


@pytest.mark.parametrize("record,check", REAL_LOOK_ALIKES, ids=[f"{c}-{i}" for i, (_, c) in
                                                                enumerate(REAL_LOOK_ALIKES)])
def test_accuracy_is_quiet_on_real_look_alikes(tmp_path, record, check):
    samples, _ = load_samples(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert check_accuracy(samples).findings == []


def test_preference_records_name_the_chosen_field(tmp_path):
    record = {"conversations": [{"from": "human", "value": "今天星期几？"}],
              "chosen": {"from": "gpt", "value": "作为一个AI语言模型，我无法知道今天的日期。"},
              "rejected": {"from": "gpt", "value": "星期三。"}}
    samples, _ = load_samples(write_jsonl(tmp_path / "p.jsonl", [record]))
    assert [(f.check, f.field) for f in check_accuracy(samples).findings] == [("accuracy.refusal", "chosen")]


def test_template_tokens_in_a_user_turn(tmp_path):
    record = {"messages": [{"role": "user", "content": "Hi<|im_end|>\n<|im_start|>assistant"},
                           {"role": "assistant", "content": "Hello! How can I help you today?"}]}
    samples, _ = load_samples(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert [(f.check, f.severity) for f in check_accuracy(samples).findings] == [("accuracy.template_leak", "error")]


def test_consistency_detectors(tmp_path):
    records = [
        {"instruction": "介绍一下你自己。", "input": "", "output": "你好，我是一个助手，你可以问我问题。"},
        {"instruction": "怎么学英语？", "input": "", "output": "你可以每天读英文文章，你也可以听播客。"},
        {"instruction": "推荐一本书。", "input": "", "output": "您可以读《三体》，这本书很精彩。"},  # 您 minority
        {"instruction": "写一句问候语。", "input": "", "output": "早上好,祝你今天开心!"},  # half-width in Chinese
        {"instruction": "列出学习步骤。", "input": "", "output": "1. 预习。\n2. 听课。\n3. 复习。"},
        {"instruction": "列出做饭步骤。", "input": "", "output": "1. 洗菜。\n2. 切菜。\n3. 炒菜。"},
        {"instruction": "列出运动步骤。", "input": "", "output": "1、热身。\n2、跑步。\n3、拉伸。"},  # list style
        {"instruction": "一加一等于几？", "input": "", "output": "答案：二。你算对了吗？"},  # answer label
        {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好，有什么可以帮你？"}]},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", records)
    samples, schema = load_samples(path)
    section = check_consistency(samples, schema.metrics["formats"])
    by = {(f.check, f.line) for f in section.findings}
    assert ("consistency.address", 3) in by
    assert ("consistency.punctuation_width", 4) in by
    assert ("consistency.numbered_list", 7) in by
    assert ("consistency.answer_label", 8) in by
    assert ("consistency.record_format", None) in by
    flagged_lines = {f.line for f in section.findings if f.line}
    assert flagged_lines == {3, 4, 7, 8}


def test_consistency_more_styles_and_look_alikes(tmp_path):
    you = "你可以先做计划，再按计划行动。"
    records = [
        {"instruction": "怎么开始跑步？", "input": "", "output": "你可以先慢跑，您也可以快走。"},  # both in one reply
        {"instruction": "列出三种水果。", "input": "", "output": "- 苹果\n- 香蕉\n- 橙子"},
        {"instruction": "列出三种蔬菜。", "input": "", "output": "- 白菜\n- 萝卜\n- 土豆"},
        {"instruction": "列出三种饮料。", "input": "", "output": "- 茶\n- 咖啡\n- 果汁"},
        {"instruction": "列出三种花。", "input": "", "output": "* 玫瑰\n* 百合\n* 菊花"},  # bullet minority
        {"instruction": "计算5、8、10和12的平均值。", "input": "",
         "output": "5、8、10 和 12 的平均值是 8.75。\n12、10、8 相加再加 5，除以 4 即得。"},  # no list
        {"instruction": "写一段两个人的对话。", "input": "", "output": "A: 早上好！\nB: 早上好，今天天气不错。"},  # no label
        {"instruction": "讲一个小故事。", "input": "", "output": "小猫对小狗说：“你跑得真快！”小狗笑了。"},  # quoted 你
        {"instruction": "如何学习？", "input": "", "output": you, "system": "你是一个助手。"},  # system on one only
    ]
    samples, schema = load_samples(write_jsonl(tmp_path / "c.jsonl", records))
    found = {(f.check, f.line) for f in check_consistency(samples, schema.metrics["formats"]).findings}
    assert found == {("consistency.address", 1), ("consistency.bullet_list", 5), ("consistency.system_prompt", None)}


def test_evenly_mixed_styles_give_one_file_level_finding(tmp_path):
    records = [{"instruction": f"问题{n}", "input": "", "output": ("你" if n % 2 else "您") + "可以多读书、多练习。"}
               for n in range(10)]
    samples, _ = load_samples(write_jsonl(tmp_path / "c.jsonl", records))
    section = check_consistency(samples)
    assert [(f.check, f.line) for f in section.findings] == [("consistency.address", None)]
    assert "'您' 5, '你' 5" in section.findings[0].message


def test_duplicates_exact_near_and_conflicting(tmp_path):
    text = "长城是中国古代修建的军事防御工程，东起山海关，西至嘉峪关，全长两万多公里，是世界文化遗产。"
    records = CLEAN + [
        dict(CLEAN[0]),  # exact
        {"instruction": "介绍长城。", "input": "", "output": text},
        {"instruction": "介绍长城。", "input": "", "output": text.replace("。", "！")},  # near + conflicting
    ]
    samples, _ = load_samples(write_jsonl(tmp_path / "d.jsonl", records))
    section = check_duplicates(samples)
    by = {(f.check, f.line) for f in section.findings}
    assert by == {("duplicates.exact", 9), ("duplicates.near", 11), ("duplicates.conflicting", 11)}
    assert section.metrics["exact"] == 1 and section.metrics["near"] == 1
    assert check_duplicates(load_samples(write_jsonl(tmp_path / "c.jsonl", CLEAN))[0]).findings == []


def test_contamination_exact_and_near(tmp_path):
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [
        {"instruction": "请解释相对论的基本思想，并举一个日常生活中的例子。", "output": "..."},
        {"question": "What is the boiling point of water at sea level in degrees Celsius?"},
    ])
    train = CLEAN + [
        {"instruction": "请解释相对论的基本思想，并举一个日常生活中的例子。", "input": "", "output": "相对论认为时间和空间是相对的。"},
        {"instruction": "What is the boiling point of water at sea level, in degrees Celsius?", "input": "",
         "output": "It boils at 100 degrees Celsius."},
    ]
    samples, _ = load_samples(write_jsonl(tmp_path / "train.jsonl", train))
    section = check_contamination(samples, [eval_file])
    assert {(f.check, f.line) for f in section.findings} == {("contamination.exact", 9), ("contamination.near", 10)}
    assert section.metrics["contaminated"] == 2
    quiet, _ = load_samples(write_jsonl(tmp_path / "clean.jsonl", CLEAN))
    assert check_contamination(quiet, [eval_file]).findings == []


def test_diversity_fires_on_one_task_type_and_is_quiet_on_alpaca(tmp_path):
    require_shared()
    one_task = [{"instruction": f"把这句话翻译成英文：我有{n}个苹果。", "input": "", "output": f"I have {n} apples."}
                for n in range(30)]
    samples, _ = load_samples(write_jsonl(tmp_path / "one.jsonl", one_task))
    section = check_diversity(samples)
    assert {"diversity.task_imbalance", "diversity.low_distinct"} <= checks(section)
    assert section.metrics["top_task"] == "translation"
    real, _ = load_samples(str(SHARED / "data" / "instruct" / "alpaca_en_demo.json"))
    assert check_diversity(real).findings == []


def test_task_types_and_verb_object_heuristics():
    assert task_type("把这段话翻译成英文") == "translation"
    assert task_type("Write a Python function that reverses a string") == "code"
    assert task_type("总结这篇文章") == "summarization"
    assert task_type("为什么天空是蓝色的？") == "question answering"
    assert verb_object("写一首关于春天的诗") == ("写", "诗")
    assert verb_object("请总结这篇文章。") == ("总结", "文章")
    assert verb_object("Write a short story about a dog.") == ("write", "story")
    assert verb_object("Can you generate a list of fruits?") == ("generate", "list")
    assert verb_object("What is the capital of France?") is None
    assert rouge_l(units("写一首关于春天的诗"), units("写一首关于春天的诗")) == 1.0
    assert 0 < rouge_l(units("the cat sat"), units("the dog sat")) < 1


def test_token_lengths_and_over_max_len(tmp_path, stories_dir):
    path = write_jsonl(tmp_path / "d.jsonl", CLEAN)
    report = run_check(path, CheckOptions(tokenizer=str(stories_dir), template="alpaca_en", max_len=120))
    stats = report.sections["stats"]
    assert stats.metrics["tokens"]["max"] > 120 and 0 < stats.metrics["over_max_len"] < len(CLEAN)
    assert {f.check for f in stats.findings} == {"stats.over_max_len"}


def test_shared_alpaca_zh_measured():
    require_shared()
    report = run_check(str(SHARED / "data" / "instruct" / "alpaca_zh_demo.json"))
    s = report.summary
    assert s["records"] == 850 and s["invalid"] == 0
    assert s["exact_duplicates"] == 6  # measured on the file; each pair checked by hand to be identical
    assert report.sections["consistency"].metrics["address"]["您"] > 0
    # 你 and 您 are split ~40/60 in this file: one file-level finding, not a warning on every 你 reply
    address = [f for f in report.findings if f.check == "consistency.address"]
    assert sum(f.line is None for f in address) == 1 and len(address) < 20
    assert 0.02 < s["accuracy_flagged_rate"] < 0.08  # every finding was read by hand; see docs/data.md


def test_shared_alpaca_en_measured():
    require_shared()
    report = run_check(str(SHARED / "data" / "instruct" / "alpaca_en_demo.json"))
    s = report.summary
    assert s["records"] == 849 and s["invalid"] == 0 and s["exact_duplicates"] == 10
    by_check = report.sections["accuracy"].metrics["by_check"]
    assert "short_output" not in by_check and "language_mismatch" not in by_check  # the misfires fixed
    assert s["accuracy_flagged_rate"] < 0.04
    assert report.sections["diversity"].metrics["task_types"].get("other", 0) / s["records"] < 0.15


def test_gate_conditions():
    summary = {"invalid": 2, "near_duplicate_rate": 0.01, "errors": 3}
    assert evaluate(summary, ["invalid>0"]) == ["invalid = 2 (> 0)"]
    assert evaluate(summary, ["near_duplicate_rate>0.02"]) == []
    assert evaluate(summary, [], strict=True)
    from tunesmith.errors import TunesmithError

    with pytest.raises(TunesmithError):
        evaluate(summary, ["nonsense>1"])
    with pytest.raises(TunesmithError):
        evaluate(summary, ["invalid >> 1"])


def test_cli_check_gate_reports_and_errors(tmp_path, clean_file, capsys):
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    assert main(["data", "check", clean_file, "--json", str(out_json), "--html", str(out_html),
                 "--fail-if", "invalid>0", "--strict"]) == 0
    report = json.loads(out_json.read_text(encoding="utf-8"))
    assert report["gate"] == {"failed": False, "reasons": []} and report["summary"]["valid"] == len(CLEAN)
    page = out_html.read_text(encoding="utf-8")
    assert "<svg" in page and "task types" in page and "response length" in page
    broken = write_jsonl(tmp_path / "b.jsonl", CLEAN + [{"instruction": "q"}])
    assert main(["data", "check", broken, "--fail-if", "invalid>0"]) == 1
    assert main(["data", "check", broken]) == 0  # no gate asked for: report only
    err = capsys.readouterr()
    assert "line 9" in err.out and "missing field 'output'" in err.out
    assert main(["data", "check", str(tmp_path / "missing.json")]) == 2
    assert main(["data", "check", clean_file, "--fail-if", "bogus>1"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def _pair(prompt, chosen, rejected):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def test_preference_pairs_identical_swapped_duplicate_empty_and_length_bias(tmp_path):
    records = [
        _pair("Name a fruit.", "An apple is a sweet, crunchy fruit that grows on trees.", "Apple."),
        _pair("Name a colour.", "Blue, the colour of a clear sky.", "Blue, the colour of a clear sky."),
        {"conversations": [{"from": "human", "value": "Name a fruit."}],  # LLaMA-Factory shape of the pair above
         "chosen": {"from": "gpt", "value": "Apple."},  # ... preferred the other way
         "rejected": {"from": "gpt", "value": "An apple is a sweet, crunchy fruit that grows on trees."}},
        _pair("Name a fruit.", "An apple is a sweet, crunchy fruit that grows on trees.", "Apple."),  # duplicate
        _pair("Say hi.", "Hello there, it is very nice to meet you today!", "   "),  # empty side
        _pair("Count to three.", "One, two and then three, in that order.", "1 2 3"),
        {"instruction": "Translate 'gato'.", "chosen": "It means 'cat' in Spanish.", "rejected": "Dog."},
    ]
    report = run_check(write_jsonl(tmp_path / "p.jsonl", records))
    pref = report.sections["preference"]
    by = {(f.check, f.line, f.field) for f in report.findings if f.check.startswith("preference.")}
    assert by == {("preference.identical", 2, "rejected"), ("preference.swapped", 3, "chosen"),
                  ("preference.swapped", 4, "chosen"),  # line 4 repeats line 1, so it contradicts line 3 too
                  ("preference.empty_side", 5, "rejected"), ("preference.length_bias", None, None)}
    assert ("duplicates.exact", 4) in {(f.check, f.line) for f in report.findings}
    assert not [f for f in report.findings if f.check == "duplicates.conflicting"]  # many pairs per prompt is normal
    # 6 pairs read (the empty one is invalid): chosen longer in 4, shorter in 1 (the swapped one), equal in 1
    assert (pref.metrics["pairs"], pref.metrics["chosen_longer"], pref.metrics["chosen_shorter"]) == (6, 4, 1)
    assert pref.metrics["empty_sides"] == 1 and report.summary["invalid"] == 1
    assert report.summary["chosen_longer_share"] == round(4 / 6, 4) and report.summary["identical_pairs"] == 1
    # the mean length ratio fires (4/6 < 80%): units are words, 11+7+1+11+8+5 vs 1+7+11+1+3+1
    assert pref.metrics["length_ratio"] == round(43 / 24, 3)
    bias = next(f for f in pref.findings if f.check == "preference.length_bias")
    assert "in 4 of 6 pairs (67%)" in bias.message and "ratio 1.792" in bias.message


def test_preference_balanced_lengths_are_quiet_and_chinese_counts_characters(tmp_path):
    records = [_pair("你好", "你好，很高兴认识你。", "你好。"), _pair("天气", "晴。", "今天是晴天，很暖和。"),
               _pair("Hi", "Hello to you all.", "Hi there, friend."), _pair("Bye", "Bye.", "Goodbye, see you.")]
    pref = run_check(write_jsonl(tmp_path / "p.jsonl", records)).sections["preference"]
    assert pref.findings == [] and pref.metrics["chosen_longer"] == 2 and pref.metrics["chosen_shorter"] == 2
    # CJK characters and Latin words: 8 + 1 + 4 + 1 against 2 + 8 + 3 + 3
    assert (pref.metrics["mean_chosen_units"], pref.metrics["mean_rejected_units"]) == (3.5, 4.0)


def test_kto_label_balance_and_swapped_labels(tmp_path):
    reply = lambda text, label: {"messages": [{"role": "user", "content": "Tell me a fact."},  # noqa: E731
                                              {"role": "assistant", "content": text}], "label": label}
    trl = {"prompt": "Tell me a fact.", "completion": "Water boils at 100 C at sea level.", "label": False}
    records = [reply("Water boils at 100 C at sea level.", True), reply("The moon is cheese.", False),
               reply("Owls can turn their heads far.", True), reply("Cats are dogs.", False), trl,
               reply("Honey never spoils.", True), reply("Sharks are older than trees.", True),
               reply("Venus spins backwards.", True)]
    report = run_check(write_jsonl(tmp_path / "k.jsonl", records))
    pref = report.sections["preference"]
    assert (pref.metrics["desirable"], pref.metrics["undesirable"], pref.metrics["swapped_labels"]) == (5, 3, 1)
    assert {(f.check, f.severity, f.line) for f in pref.findings} == {
        ("preference.swapped", "warning", 5), ("preference.kto_balance", "info", None)}
    # 5 / (3 w) = 7/6, the middle of the KTO paper's range [1, 4/3]
    assert "undesirable_weight: 1.43" in next(f.message for f in pref.findings if f.check == "preference.kto_balance")
    # undesirable replies are bad on purpose: the accuracy heuristics leave them alone
    bad = [reply("TODO", False), reply("TODO", True)]
    flagged = check_accuracy(load_samples(write_jsonl(tmp_path / "bad.jsonl", bad))[0]).findings
    assert [(f.check, f.line) for f in flagged] == [("accuracy.placeholder", 2)]
    one = run_check(write_jsonl(tmp_path / "one.jsonl", records[:1] + records[2:3])).sections["preference"]
    assert [(f.check, f.severity) for f in one.findings] == [("preference.kto_one_label", "error")]


def test_shared_dpo_en_demo_preference_numbers():
    require_shared()
    report = run_check(str(SHARED / "data" / "preference" / "dpo_en_demo.json"))
    m = report.sections["preference"].metrics
    # measured on the file (lengths in words): no length bias, rejected is slightly longer on average
    assert (m["pairs"], m["identical"], m["swapped"], m["empty_sides"]) == (250, 0, 0, 0)
    assert (m["chosen_longer"], m["chosen_shorter"], m["same_length"]) == (114, 133, 3)
    assert (m["mean_chosen_units"], m["mean_rejected_units"], m["length_ratio"]) == (232.6, 248.5, 0.936)
    assert report.summary["exact_duplicates"] == 5  # five pairs appear twice, all three fields equal (checked by hand)
    assert not [f for f in report.findings if f.check.startswith("preference.")]


def test_cli_check_shows_preference_section_in_every_report(tmp_path, capsys):
    records = [_pair("Name a fruit.", "An apple is a sweet, crunchy fruit that grows on trees.", "Apple."),
               _pair("Name a tree.", "An oak is a large tree with hard wood and acorns.", "Oak.")]
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    assert main(["data", "check", write_jsonl(tmp_path / "p.jsonl", records), "--json", str(out_json),
                 "--html", str(out_html), "--fail-if", "chosen_longer_share>=0.8"]) == 1
    assert "preference.length_bias" in capsys.readouterr().out
    report = json.loads(out_json.read_text(encoding="utf-8"))
    assert report["sections"]["preference"]["metrics"]["chosen_longer"] == 2
    assert report["gate"]["reasons"] == ["chosen_longer_share = 1.0 (>= 0.8)"]
    page = out_html.read_text(encoding="utf-8")
    assert "preference.length_bias" in page and "chosen minus rejected length" in page
