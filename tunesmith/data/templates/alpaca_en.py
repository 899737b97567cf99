"""English Alpaca headers. The Stanford preamble is not added by default: set it as the dataset's
`system` prompt if the base model was trained with it."""

from .alpaca import AlpacaTemplate
from .registry import register

STANFORD_PREAMBLE = ("Below is an instruction that describes a task. "
                     "Write a response that appropriately completes the request.")


@register("alpaca_en")
class AlpacaEnTemplate(AlpacaTemplate):
    instruction_header = "### Instruction:"
    input_header = "### Input:"
    response_header = "### Response:"
