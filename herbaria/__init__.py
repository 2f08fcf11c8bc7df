"""Herbaria's command line, `herbaria` (also `python -m herbaria`).

A top-level package of its own because the commands span every stage: it may import
retrieval, captioning, assistant, demo, finetuning and location, and none of them
imports it, so the CLI's `serve` and `demo` no longer tie the assistant to the demo.
"""
