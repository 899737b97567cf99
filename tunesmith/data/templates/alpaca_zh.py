"""Chinese Alpaca headers, as in the reference material: `### 指令:` / `### 输入:` / `### 回复:`.

The reference chapter renders `### 指令:\n{instruction}\n\n### 输入:\n{input}\n\n### 回复:\n` (the input section only
when there is one) and its completion-only collator masks on the response template `### 回复:\n`.
"""

from .alpaca import AlpacaTemplate
from .registry import register


@register("alpaca_zh")
class AlpacaZhTemplate(AlpacaTemplate):
    instruction_header = "### 指令:"
    input_header = "### 输入:"
    response_header = "### 回复:"
