"""Diversity: task-type distribution, distinct-n, and verb–object coverage of instructions.

Task types come from ordered keyword rules (Chinese and English); the first rule that matches wins. English task
verbs (change, add, determine, ...) count only as the first word, so that "climate change" is no rewriting task.

Verb–object pairs (the Self-Instruct paper's diversity picture) without a parser:
- Chinese: after optional politeness (请, 帮我, 你能, ...), the first verb from a curated list within the first
  four characters; the object is the noun chunk that follows, up to punctuation, with leading determiners and
  measure words (一个, 这篇, 以下, ...) removed; when the chunk contains 的, only the part after the last 的 is
  kept (写一首关于春天的诗 → 写/诗). The object is cut to four characters.
- English: after optional politeness (please, can you, ...), the first word if it is in a list of instruction
  verbs; the object is the head of the following noun chunk: determiners/numbers skipped, the chunk ends at a
  preposition, conjunction or punctuation, and its last word (at most the third) is the head
  (Write a short story about a dog → write/story).
The task-type list adds "generation" (write/create/生成 ...) to the usual six, so that creative and
generation tasks do not all land in "other". Instructions that are questions or start with anything else count as "no pair"; coverage reports the share parsed.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from .base import Finding, Sample, Section
from .text import ngrams, units

_EN_START = r"^(please |can you |could you |now |then )?"  # English task verbs count at the start only
TASK_RULES: list[tuple[str, re.Pattern]] = [(name, re.compile(pattern, re.I)) for name, pattern in [
    ("translation", r"翻译|译成|译为|翻成|中译英|英译中|translat"),
    ("code", r"代码|编程|程序|函数|脚本|算法|正则|sql|python|javascript|java\b|c\+\+|html|css|\bcode\b|"
             r"\bfunction\b|\bprogram\b|\bscript\b|algorithm|regex|\bquery\b|```"),
    ("summarization", r"总结|概括|摘要|归纳|概述|summar|tl;?dr|\bcondense|sum up (the |this )?(main |key )?(points|"
                      r"ideas|text|article|passage|paragraph|story|plot)|" + _EN_START + r"outline\b"),
    ("rewriting", r"改写|重写|润色|改正|纠正|修正|修改|转述|换一种|同义句|改为|改成|变成|替换|转换[为成]|转化[为成]|"
                  r"重新(排列|表述|组织|措辞|安排)|排序|按.{0,12}排列|格式化|删除|插入|添加|加入|补全|填空|缩写|扩写|简化|"
                  r"paraphrase|rewrite|rephrase|reword|proofread|\bedit\b|correct (the|this|any|all)|"
                  r"more (formal|concise|polite)|" + _EN_START + r"(re-?write|substitute|replace|rearrange|re-?order|"
                  r"reverse|convert|change|transform|fill in|complete|remove|delete|insert|sort|organi[sz]e|"
                  r"format|simplify|shorten|expand|fix|combine|connect|merge|piece|make (this|the|it))\b"),
    ("analysis", r"分析|比较|对比|评价|评估|判断|分类|归类|区别|区分|优缺点|情感|情绪|语气|analy[sz]|compar|contrast|"
                 r"evaluat|assess|classif|categori[sz]|pros and cons|critique|sentiment|" + _EN_START +
                 r"(determine|differentiate|distinguish|choose|select|pick|decide|rate|rank|detect|diagnose)\b"),
    # a Chinese task that starts by asking for facts is a question even when it mentions making something
    # (列出制作…的五个因素, 引用…写的一首诗)
    ("generation", r"^(?!(请|请你)?(列出|列举|找出|找到|查找|计算|说出|引用|解释|描述|介绍|定义|确定|识别))"
                   r".*?(写|生成|创作|创建|创造|建立|编一|设计|想出|构思|起草|撰写|提出|建议|讲一个|组成一个|造句|构造|构建|"
                   r"制作|制定|取一个|起一个|命名|续写|结束.{0,4}故事|标语|口号|标题|推荐|发一|发布一|一封)|" + _EN_START +
                   r"(write|generate|create|compose|draft|design|invent|brainstorm|come up with|make|produce|add|"
                   r"suggest|propose|recommend|develop|construct|formulate|build|plan|imagine|pretend|tell (me )?a|"
                   r"entertain|give (me )?(an? |some |\w+ )?(examples?|ideas?|tips?|names?|titles?|suggestions?)|"
                   r"provide (an? |some |\w+ )?(examples?|ideas?|tips?|names?|titles?|suggestions?))\b"),
    ("question answering", r"什么|为什么|如何|怎么|怎样|哪|谁|多少|是否|吗|解释|说明|介绍|描述|定义|[?？]|列出|列举|找出|找到|"
                           r"查找|获取|确定|计算|说出|说一个|识别|提供|给出|估计|预测|引用|求出?|"
                           r"^(what|why|how|who|when|where|which|is|are|do|does|can|should)\b|explain|describe|"
                           r"define|\bname\b|\blist\b|identify|find|calculate|solve|" + _EN_START +
                           r"(search|look up|estimate|predict|sum|multiply|divide|compute|state|indicate|tell|give|"
                           r"provide|derive|prove|cite)\b"),
]]
TASK_TYPES = [name for name, _ in TASK_RULES] + ["other"]
TASK_LABELS = {"zh": {"translation": "翻译", "code": "代码", "summarization": "摘要", "rewriting": "改写",
                      "analysis": "分析", "generation": "生成", "question answering": "问答", "other": "其他"},
               "en": {"translation": "translate", "code": "code", "summarization": "summarize",
                      "rewriting": "rewrite", "analysis": "analyze",
               "generation": "generate", "question answering": "qa", "other": "other"}}


def task_type(instruction: str) -> str:
    for name, pattern in TASK_RULES:
        if pattern.search(instruction):
            return name
    return "other"


ZH_VERBS = sorted("""解释 说明 描述 介绍 阐述 定义 写 编写 撰写 创作 起草 生成 创建 制作 设计 构建 构思 制定 翻译 总结 概括 归纳
分析 比较 对比 评价 评估 判断 分类 识别 列出 列举 给出 提供 举出 说出 计算 求 估计 预测 改写 重写 润色 修改 纠正 改正 转换 编辑
推荐 建议 回答 解答 找出 提取 查找 检查 讨论 选择 确定 排序 整理 组织 解决 想出 命名 造 猜测 描绘 构造 证明 完成 续写 扩写
缩写 改编 模拟 规划 安排 创造 表达 反驳 讲述 填写 补全 标注 统计 对照""".split(), key=len, reverse=True)
_ZH_POLITE = re.compile(r"^(请你|请|麻烦你?|帮我|帮忙|你能否?|你可以|能否|能不能|可以|试着|尝试|为我|给我|我想让你|我需要你)+")
_ZH_DETERMINERS = re.compile(r"^(一下|一些|一个|一篇|一段|一份|一首|一封|一句|一则|一条|一种|一组|一张|一列|几个|几种|"
                             r"[0-9一二三四五六七八九十两]+[个种条句篇段首项点件位名道]|下面的?|以下的?|下列的?|给定的?|这个|这篇|"
                             r"这段|这句|这些|那个|该|此|出|关于)+")
_ZH_STOP = re.compile(r"[，。！？；：、,.!?;:\s（）()“”\"'《》]")

EN_VERBS = set("""write generate create compose draft produce make design build develop construct describe explain
define summarize summarise translate list name give provide suggest recommend propose identify find classify
categorize categorise analyze analyse compare contrast evaluate assess rewrite rephrase paraphrase edit correct
convert change transform calculate compute estimate predict determine choose select sort rank arrange organize
organise outline plan brainstorm come tell answer solve complete fill extract detect predict guess add remove
replace insert delete delete format reformat simplify shorten expand elaborate discuss argue prove show imagine
develop invent formulate derive find cite quote count measure recommend state express offer present detail
critique review proofread decide explain""".split())
_EN_POLITE = re.compile(r"^(please|kindly|can you|could you|would you|will you|help me|i want you to|i need you to|"
                        r"let's|lets|now|then)\s+", re.I)
_EN_SKIP = set("a an the this that these those some any one two three four five six seven eight nine ten few "
               "several following given me us him her them my your our its their each every another more".split())
_EN_END = set("about of for to in on at with by from into that which who whom whose and or but as than using "
              "based when where while if so".split())


def verb_object(instruction: str) -> tuple[str, str] | None:
    """The (verb, object) pair of an instruction by the heuristics above, or None."""
    text = instruction.strip()
    if re.match(r"[A-Za-z]", text):
        return _en_pair(text)
    return _zh_pair(text)


def _zh_pair(text: str) -> tuple[str, str] | None:
    if re.search(r"[吗？?]\s*$", text):  # a question, not an imperative
        return None
    text = _ZH_POLITE.sub("", text)
    for start in range(0, 4):
        verb = next((v for v in ZH_VERBS if text.startswith(v, start)), None)
        if verb:
            break
    else:
        return None
    rest = _ZH_STOP.split(text[start + len(verb):], 1)[0]
    rest = _ZH_DETERMINERS.sub("", rest)
    if "的" in rest:
        rest = rest.rsplit("的", 1)[1]
    rest = _ZH_DETERMINERS.sub("", rest)[:4]
    return (verb, rest) if rest else None


def _en_pair(text: str) -> tuple[str, str] | None:
    previous = None
    while previous != text:
        previous, text = text, _EN_POLITE.sub("", text)
    words = re.findall(r"[A-Za-z][A-Za-z'-]*|[^\sA-Za-z]", text.lower())
    if not words or words[0] not in EN_VERBS:
        return None
    verb, chunk, rest = words[0], [], words[1:]
    if verb == "come" and rest[:2] == ["up", "with"]:
        rest = rest[2:]
    for word in rest:
        if not chunk and (word in _EN_SKIP or word.isdigit()):
            continue
        if word in _EN_END or not re.match(r"[a-z]", word):
            break
        chunk.append(word)
        if len(chunk) == 3:
            break
    return (verb, chunk[-1]) if chunk else None


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the texts (units: CJK characters, Latin words)."""
    grams = [g for text in texts for g in ngrams(units(text), n)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def check_diversity(samples: list[Sample], *, max_task_share: float = 0.6, min_distinct_2: float = 0.3,
                    distinct_sample: int = 500, seed: int = 0) -> Section:
    """Task mix, distinct-1/2 and verb–object coverage. distinct-n falls as a corpus grows, so it is computed on a
    fixed-size random subsample (`distinct_sample`) to keep it comparable across files."""
    section = Section("diversity")
    if not samples:
        return section
    tasks = Counter(task_type(s.instruction) for s in samples)
    subset = random.Random(seed).sample(samples, min(distinct_sample, len(samples)))
    pairs = [verb_object(s.instruction) for s in samples]
    parsed = [p for p in pairs if p]
    verbs = Counter(v for v, _ in parsed)
    top_task, top_count = tasks.most_common(1)[0]
    section.metrics.update({
        "task_types": {name: tasks[name] for name in TASK_TYPES if tasks[name]},
        "top_task": top_task,
        "top_task_share": round(top_count / len(samples), 4),
        "distinct_1_instruction": distinct_n([s.prompt for s in subset], 1),
        "distinct_2_instruction": distinct_n([s.prompt for s in subset], 2),
        "distinct_1_response": distinct_n([s.response for s in subset], 1),
        "distinct_2_response": distinct_n([s.response for s in subset], 2),
        "verb_object_parsed": round(len(parsed) / len(samples), 4),
        "unique_verbs": len(verbs),
        "unique_verb_object_pairs": len(set(parsed)),
        "top_verbs": dict(verbs.most_common(15)),
        "top_verb_object_pairs": {f"{v} {o}": c for (v, o), c in Counter(parsed).most_common(15)},
    })
    section.charts["task types"] = section.metrics["task_types"]
    section.charts["top verbs"] = section.metrics["top_verbs"]
    if len(samples) >= 20 and top_count / len(samples) > max_task_share:
        section.findings.append(Finding("diversity.task_imbalance", "warning",
                                        f"{top_count / len(samples):.0%} of the samples are '{top_task}' "
                                        f"(limit {max_task_share:.0%}): add other task types"))
    if len(samples) >= 20 and section.metrics["distinct_2_instruction"] < min_distinct_2:
        section.findings.append(Finding("diversity.low_distinct", "warning",
                                        f"instructions are repetitive: distinct-2 "
                                        f"{section.metrics['distinct_2_instruction']} < {min_distinct_2}"))
    return section
