"""Data: read files, normalise records to conversations, render with a template, mask labels, batch."""

from .collator import make_collator
from .dataset import BuiltData, build_datasets, load_samples
from .encoding import IGNORE_INDEX, encode_conversation
from .formats import detect_format, normalize_record
from .preview import preview_samples
from .readers import Record, read_records
from .templates import available_templates, get_template

__all__ = ["BuiltData", "IGNORE_INDEX", "Record", "available_templates", "build_datasets", "detect_format",
           "encode_conversation", "get_template", "load_samples", "make_collator", "normalize_record",
           "preview_samples", "read_records"]
