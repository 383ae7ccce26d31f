"""Evaluation: bits per character and per byte on any text, the tokenizer study, and a task for lm-evaluation-harness."""
