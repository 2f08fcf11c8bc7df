"""Errors that reach the user as one clear line.

The CLI maps `BadInput` to exit code 2 and every other `HerbariaError` to 1; the
web demo shows their message and nothing else, so messages must be safe to show
(no stack traces, no absolute paths outside the collection).
"""


class HerbariaError(Exception):
    """A failure the user can act on; its message is shown as is."""


class BadInput(HerbariaError, ValueError):
    """The user's input (file, archive, query, option) is wrong; exit code 2."""


class ImageError(BadInput):
    """An image could not be used: not an image, corrupt, truncated or too large."""


class NetworkUnavailable(HerbariaError):
    """Something needs the network (weights, remote media) and there is none."""


class IndexMismatch(BadInput):
    """An index was built with another encoder than the one asked for."""
