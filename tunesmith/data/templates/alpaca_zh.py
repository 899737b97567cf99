"""Chinese Alpaca headers, as in the reference material (指令 / 输入 / 回答)."""

from .alpaca import AlpacaTemplate
from .registry import register


@register("alpaca_zh")
class AlpacaZhTemplate(AlpacaTemplate):
    instruction_header = "### 指令:"
    input_header = "### 输入:"
    response_header = "### 回答:"
