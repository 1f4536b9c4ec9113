"""Data for the examples: character-level text (``text``)."""

from .text import Batch, CharStream, Vocabulary, load_shakespeare, load_text_file, split_text

__all__ = ["Batch", "CharStream", "Vocabulary", "load_shakespeare", "load_text_file", "split_text"]
