"""tunesmith: turn a general pretrained language model into your own."""

__version__ = "0.1.0"
