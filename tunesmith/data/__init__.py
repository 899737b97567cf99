"""Data: read files, normalise records to conversations, render with a template, mask labels, batch.

Nothing is imported here: `tunesmith train` reads its data files before the training libraries load (data/check.py).
"""
