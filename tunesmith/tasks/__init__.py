"""Tasks other than supervised fine-tuning of a chat model, one sub-package each (`classification/`)."""
