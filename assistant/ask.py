"""One turn of the assistant for a caller that keeps no process alive between turns (`herbaria ask`).

Why the state lives in a file here: each `herbaria ask` is a new process, so a follow-up
("only Rubiaceae", "more like the second one") can only continue the conversation when
the previous turn's state was saved and is read back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from assistant.agent import HerbariaAssistant, TurnResult
from assistant.chat import load_chat_model


def ask(collection: str | Path, question: str | None = "", image: str | Path | None = None, *,
        filters: Sequence[str] | dict[str, Any] | None = None, model: str | None = None, captioner: str = "grounded",
        chat_model: str | None = None, chat_base_url: str | None = None,
        state_file: str | Path | None = None) -> Iterator[str | TurnResult]:
    """Stage: the answer's text as it is composed, then the TurnResult; the conversation continues from
    `state_file` when it exists and is saved back to it after the turn."""
    state_path = Path(state_file) if state_file else None
    state = json.loads(state_path.read_text()) if state_path and state_path.is_file() else None
    assistant = HerbariaAssistant(collection, model=model, captioner=captioner, lazy=True,  # one turn: load what it uses
                                  chat_model=load_chat_model(chat_model, base_url=chat_base_url))
    result: TurnResult | None = None
    for item in assistant.stream(question or "", image, filters=filters, state=state):
        if isinstance(item, TurnResult):
            result = item
        else:
            yield item
    assert result is not None  # stream() ends with exactly one TurnResult
    if state_path:
        state_path.write_text(json.dumps(result.state))
    yield result
