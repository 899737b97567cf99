"""Dataset tools: mix (ratios, replay data, task prefixes), dedup, split (stratified, leak-free), convert."""

from .convert import convert_file
from .dedup import dedup_file, dedup_items
from .mix import MixSource, mix_files, mix_sources, parse_source
from .records import read_items, to_record, write_records
from .split import split_file

__all__ = ["MixSource", "convert_file", "dedup_file", "dedup_items", "mix_files", "mix_sources", "parse_source",
           "read_items", "split_file", "to_record", "write_records"]
