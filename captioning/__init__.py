"""Trait descriptions of specimen images: retrieval-grounded, neural, and off-the-shelf captioners.

Entry points: `captioning.api.caption_image` / `CaptionService` (caption against a
collection), `captioning.api.train_captioner` (learn from the collection's images and
descriptions), `captioning.registry.create_captioner` (by preset name). Importing this
package loads nothing heavy, so `herbaria --help` stays fast.
"""
