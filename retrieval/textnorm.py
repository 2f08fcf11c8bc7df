"""One normal form for text that comes from outside: questions, description files, records.

Text reaches Herbaria from visitors and from files nobody checked, so it can hold NUL
bytes, terminal escape sequences, right-to-left overrides that make a citation read
backwards, zero-width characters that split a word in two, decomposed accents that
split a token, and (in Python strings) lone surrogates that cannot be encoded. Every
boundary (the router, the description readers, trait extraction, the composer) passes
text through `normalize_text` once, so the code behind it never meets those cases.
It is the identity on ordinary text, so offsets into already-normal text stay valid.
"""

from __future__ import annotations

import re
import unicodedata

# Kept format characters: zero-width (non-)joiners shape Persian, Indic scripts and emoji.
_KEEP_FORMAT = {"\u200c", "\u200d"}
# Everything that needs work: C0/C1 controls but tab and newline, format characters (bidi
# overrides and marks, zero-width space, BOM, soft hyphen), line/paragraph separators, surrogates.
_SUSPECT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
                      r"\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
                      r"\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001-\U000e007f"
                      r"\ud800-\udfff]")


# Terminal escape sequences (colours, cursor moves): removed whole, not just their ESC byte.
_ANSI = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


def _replacement(char: str) -> str:
    if "\ud800" <= char <= "\udfff":
        return "\ufffd"  # a lone surrogate: shown as the replacement character, never encoded
    if char in "\r\x85":
        return "\n"
    if char.isspace():  # vertical tab, form feed, file/group/record/unit separators, U+2028/2029
        return " "
    if char in _KEEP_FORMAT:
        return char
    category = unicodedata.category(char)
    if category in ("Cc", "Cf"):
        return ""
    return char


def normalize_text(text: str) -> str:
    """NFC text with no control or invisible format characters (tab and newline kept, CR/CRLF -> newline),
    whitespace-like separators as spaces and lone surrogates as U+FFFD. Whitespace is not collapsed."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if _SUSPECT.search(text):
        text = _ANSI.sub("", text.replace("\r\n", "\n"))
        text = _SUSPECT.sub(lambda m: _replacement(m.group(0)), text)
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text
