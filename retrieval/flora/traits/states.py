"""Reading what a segment says about its organs: runs of states, negation, frequency, positions and numbers.

After the head, a segment is a sequence like 'usually elliptic to obovate, not serrate above, 3-5 cm long':
consecutive states of one character form one trait ('elliptic to obovate'), negation and modifiers apply to
the run they open, postposed positions ('above') qualify the run before them, and an organ met on the way
either takes the states before it ('white flowers'), is introduced ('with stipules', 'sans bractéoles') or
starts a new subject ('leaves glabrous and fruits red').
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from retrieval.flora.traits.measures import (
    SUFFIX_CHARACTER,
    bounds,
    measured_characters,
    plausible_count,
)
from retrieval.flora.traits.tokens import ORGANISH, Token
from retrieval.flora.traits.words import BREAKS, CONJUNCTIONS, HABIT_NOUNS, WITHOUT

if TYPE_CHECKING:
    from retrieval.flora.traits.reader import Reader

Targets = list[tuple[str | None, tuple[int, int] | None]]

# the characters a position can qualify: 'margin serrate' is the margin's, 'margin 3 cm' is not
_POSITION_FITS = {
    "margin": {"margin", "pubescence", "shape", "architecture", "orientation", "surface", "texture", "colour"},
    "apex": {"shape", "architecture", "pubescence", "orientation", "colour", "surface"},
    "base": {"shape", "architecture", "pubescence", "orientation", "colour", "surface", "position", "fusion"},
}


def fits(position: str | None, character: str) -> bool:
    """True when `position` can qualify `character` (any character for positions without a list)."""
    if not position:
        return False
    allowed = _POSITION_FITS.get(position)
    return allowed is None or character in allowed


def joined(seg: list[Token], j: int) -> bool:
    """True when seg[j] is reached through a connector from a state ('white or pink', 'glabrous to pubescent')."""
    k = j - 1
    while k >= 0 and seg[k].kind in ("degree", "modifier"):
        k -= 1
    return k >= 0 and seg[k].kind == "word" and (seg[k].value in CONJUNCTIONS or seg[k].value in ("-", "/", "a"))


def last_and_split(seg: list[Token], run: list[Token]) -> int:
    """Index in `run` after the last 'and'/'et' between its states (0 when there is none)."""
    cut = 0
    positions = {id(token): k for k, token in enumerate(seg)}
    for r in range(1, len(run)):
        a, b = positions.get(id(run[r - 1])), positions.get(id(run[r]))
        if a is None or b is None:
            continue
        if any(x.kind == "word" and x.value in ("and", "et", "&") for x in seg[a + 1:b]):
            cut = r
    return cut


def by_character(run: list[Token]) -> list[list[Token]]:
    """One group per character: 'elliptic to obovate' stays one value; 'coriaceous, elliptic' does not."""
    groups: list[list[Token]] = []
    for token in run:
        if groups and groups[-1][-1].character == token.character:
            groups[-1].append(token)
        else:
            groups.append([token])
    return groups


def _fresh() -> dict[str, Any]:
    """Nothing pending: no negation, modifier ('usually') or degree ('very') waiting for the next state."""
    return {"neg": False, "mod": "", "deg": ""}


class StateReader:
    """Reads a segment from its first token after the head, recording traits of the organs in force (`targets`).

    The segment's context `ctx` (organ in force, carried position) and the sentence's `sentence_state`
    (its first organ) are updated as organs and habit words are met.
    """

    def __init__(self, reader: Reader, seg: list[Token], targets: Targets, position: str | None,
                 sentence: tuple[int, int], ctx: dict[str, Any], sentence_state: dict[str, Any]) -> None:
        self.reader = reader
        self.seg = seg
        self.targets = targets
        self.position = position
        self.sentence = sentence
        self.ctx = ctx
        self.sentence_state = sentence_state
        self.run: list[Token] = []  # states of one character in a row, waiting to be recorded
        self.run_meta = _fresh()  # the negation and modifier that opened the run
        self.pending = _fresh()
        # a position carried from the previous segment stays only if the first state fits it
        self.check_carry = ctx.pop("carry_check", False)

    def read(self, i: int) -> None:
        handlers = {"state": self.on_state, "negation": self.on_negation, "modifier": self.on_modifier,
                    "degree": self.on_degree, "position": self.on_position, "organ": self.on_organ, "part": self.on_organ,
                    "type": self.on_organ, "measure": self.on_measure, "count": self.on_count, "suffix": self.on_suffix,
                    "chromosome": self.on_chromosome}
        j = i
        while j < len(self.seg):
            j = handlers.get(self.seg[j].kind, self.on_word)(j)
        self.flush()
        if self.position and self.position in ("margin", "apex", "base"):
            self.ctx["position"] = self.position

    def flush(self) -> None:
        if self.run:
            emit_run(self.reader, self.run, self.targets, self.position, self.sentence, self.run_meta)
        self.run = []

    def set_subject(self, organ: str, token: Token) -> None:
        """`organ` (read from `token`) is now the organ in force."""
        self.targets = [(organ, (token.start, token.end))]
        self.ctx["organ"], self.ctx["organ_span"] = self.targets[0]

    # ---------------------------------------------------------------- one handler per token kind; each returns the next index
    def on_state(self, j: int) -> int:
        token = self.seg[j]
        if self.check_carry:
            self.check_carry = False
            if not fits(self.position, token.character):
                self.position = None
        # habit nouns ("Shrub or small tree") and habit states describe the whole plant
        if token.character == "habit" and (token.value in HABIT_NOUNS or self.targets[0][0] in (None, "plant")):
            if self.targets[0][0] != "plant":
                self.flush()
            self.targets = [("plant", None)]
            self.ctx["organ"], self.ctx["organ_span"] = "plant", None
            if self.sentence_state["sentence_organ"] is None:
                self.sentence_state["sentence_organ"] = "plant"
        pending, run_meta = self.pending, self.run_meta
        if self.run and (pending["neg"] != run_meta["neg"] or (pending["mod"] and pending["mod"] != run_meta["mod"])):
            self.flush()
        if not self.run:
            self.run_meta = dict(pending)
        self.run.append(token)
        # "not white or pink": the negation goes on through connectors
        self.pending = {"neg": pending["neg"] if pending["neg"] and joined(self.seg, j + 1) else False, "mod": "", "deg": ""}
        return j + 1

    def on_negation(self, j: int) -> int:
        seg = self.seg
        # "glabrous or not": the state before is optional
        if self.run and j >= 1 and seg[j - 1].kind == "word" and seg[j - 1].value in ("or", "ou") and \
                not (j + 1 < len(seg) and seg[j + 1].kind == "state"):
            self.run_meta["mod"] = self.run_meta["mod"] or "sometimes"
            return j + 1
        self.flush()
        self.pending["neg"] = True
        return j + 1

    def on_modifier(self, j: int) -> int:
        if self.run and j + 1 < len(self.seg):
            self.flush()
        self.pending["mod"] = self.seg[j].value
        return j + 1

    def on_degree(self, j: int) -> int:
        self.pending["deg"] = self.seg[j].value
        return j + 1

    def on_position(self, j: int) -> int:
        token = self.seg[j]
        # postposed: "glabrous above, pubescent beneath"
        if self.run:
            saved = self.position
            self.position = token.value
            self.flush()
            self.position = saved
        elif j + 1 < len(self.seg) and self.seg[j + 1].kind == "state":
            self.position = token.value
        return j + 1

    def on_organ(self, j: int) -> int:
        seg, reader = self.seg, self.reader
        token = seg[j]
        kind = token.kind
        prev = seg[j - 1] if j > 0 else None
        prev2 = seg[j - 2] if j > 1 else None
        organ = reader.axis(token.value, self.targets[0][0]) if kind == "organ" else (
            token.character if kind == "type" else reader.compose(self.targets[0][0], token.value))
        if kind == "organ" and j + 1 < len(seg) and seg[j + 1].kind == "part":
            organ = f"{organ} {seg[j + 1].value}"
            token = Token("organ", organ, token.start, seg[j + 1].end, reader.text[token.start:seg[j + 1].end])
            j += 1
        if self.run and prev is not None and prev.kind in ("state", "degree") and not (prev.kind == "state" and prev.character == "habit"):
            self.attributive(organ, token)
        elif prev is not None and self.introduces(prev, prev2):
            self.introduced(organ, token, prev, prev2, seg[j + 1:])
        elif prev is not None and prev.kind == "word" and prev.value in ("and", "et", "&") and prev2 is not None \
                and prev2.kind in ("state", "measure", "count", "suffix", "organ", "part", "type"):
            self.flush()  # "leaves glabrous and fruits red": a new subject
            self.set_subject(organ, token)
            if kind == "type":
                reader.emit(organ, "type", token.text, (token.start, token.end), self.sentence, terms=[token.value])
            self.pending = _fresh()
        elif prev is not None and prev.kind == "word" and prev.value in ("a", "an", "un", "une", "en") and kind == "type":
            # "fruit a capsule", "inflorescences en cymes"
            self.flush()
            reader.emit(token.character, "type", token.text, (token.start, token.end), self.sentence, terms=[token.value],
                        organ_span=self.targets[0][1])
        else:
            self.flush()
        return j + 1

    def attributive(self, organ: str, token: Token) -> None:
        """'opposite serrate leaves', 'white flowers': the run before the organ is the organ's; but in
        'corolla pentagonal and ovoid fruits' only 'ovoid' is the fruit's."""
        cut = last_and_split(self.seg, self.run) if self.targets[0][0] not in (None, "plant") else 0
        if cut:
            emit_run(self.reader, self.run[:cut], self.targets, self.position, self.sentence, self.run_meta)
            self.run = self.run[cut:]
        self.targets = [(organ, (token.start, token.end))]
        emit_run(self.reader, self.run, self.targets, self.position, self.sentence, self.run_meta)
        self.run = []
        self.ctx["organ"], self.ctx["organ_span"] = self.targets[0]
        if token.kind == "type":
            self.reader.emit(organ, "type", token.text, (token.start, token.end), self.sentence, terms=[token.value])

    def introduces(self, prev: Token, prev2: Token | None) -> bool:
        """True when the words before an organ introduce it: 'with', 'sans', 'not', 'with the', a count."""
        reader = self.reader
        return (prev.kind == "word" and prev.value in reader.with_words | WITHOUT or prev.kind == "negation" or
                (prev.kind == "word" and prev.value in reader.articles and prev2 is not None and
                 prev2.kind == "word" and prev2.value in reader.with_words | WITHOUT) or
                prev.kind == "count")

    def introduced(self, organ: str, token: Token, prev: Token, prev2: Token | None, rest: list[Token]) -> None:
        """'with stipules', 'sans bractéoles', '5 petals': the organ is now the subject; its presence, absence
        or count is recorded."""
        reader, sentence = self.reader, self.sentence
        self.flush()
        absent = prev.kind == "negation" or prev.value in WITHOUT or \
            (prev2 is not None and prev2.kind == "word" and prev2.value in WITHOUT)
        if prev.kind == "count":
            reader.emit(organ, "count", re.sub(r"\s+(?:of|de)$", "", prev.text.strip()), (prev.start, prev.end), sentence,
                        terms=[], organ_span=(token.start, token.end), **bounds(prev.data["a"]))
        self.ctx["before_with"] = (self.ctx["organ"], self.ctx["organ_span"])
        self.set_subject(organ, token)
        if token.kind == "type":
            reader.emit(organ, "type", token.text, (token.start, token.end), sentence, terms=[token.value])
        # nothing said about it but its presence
        if prev.kind != "count" and (absent or not any(x.kind in ("state", "measure", "count", "suffix") for x in rest)):
            reader.emit(organ, "presence", "absent" if absent else "present", (token.start, token.end), sentence,
                        terms=["absent" if absent else "present"], organ_span=(token.start, token.end))
        self.pending = _fresh()

    def on_measure(self, j: int) -> int:
        self.flush()
        emit_measure(self.reader, self.seg[j], self.targets, self.position, self.sentence, self.pending)
        self.pending = _fresh()
        return j + 1

    def on_count(self, j: int) -> int:
        token = self.seg[j]
        nxt = self.seg[j + 1] if j + 1 < len(self.seg) else None
        if nxt is not None and nxt.kind in ORGANISH:
            return j + 1  # handled with the organ that follows: "5 petals"
        self.flush()
        for organ, ospan in self.targets:
            if not plausible_count(organ, *token.data["a"]):
                continue  # a bare number with no organ in force says nothing countable
            self.reader.emit(organ, "count", token.text.strip(), (token.start, token.end), self.sentence, terms=[],
                             organ_span=ospan, modifier=self.pending["mod"], **bounds(token.data["a"]))
        self.pending = _fresh()
        return j + 1

    def on_suffix(self, j: int) -> int:
        token = self.seg[j]
        self.flush()
        character = SUFFIX_CHARACTER.get(token.value, token.value)
        for organ, ospan in self.targets:
            self.reader.emit(organ, character, token.text.strip(), (token.start, token.end), self.sentence, terms=[],
                             organ_span=ospan, **bounds(token.data["a"]))
        return j + 1

    def on_chromosome(self, j: int) -> int:
        token = self.seg[j]
        self.flush()
        self.reader.emit("chromosome", "count", token.text.strip(), (token.start, token.end), self.sentence, terms=[])
        return j + 1

    def on_word(self, j: int) -> int:
        """Plain words: connectors keep the run going, anything else ends it."""
        token, reader = self.seg[j], self.reader
        if token.kind == "word" and token.value in BREAKS:
            self.flush()
            self.pending = _fresh()
        elif not self.keeps_run(j):
            self.flush()
            if token.kind == "word" and token.value not in reader.conj:
                self.pending["deg"] = ""
        return j + 1

    def keeps_run(self, j: int) -> bool:
        """Connectors ('or', 'to', '-') and an article before an organ or a state do not end a run."""
        token, reader = self.seg[j], self.reader
        if token.kind != "word":
            return False
        return token.value in reader.conj or token.value in ("-", "/") or \
            token.value in reader.articles and j + 1 < len(self.seg) and self.seg[j + 1].kind in ("organ", "part", "type", "state")


def emit_run(reader: Reader, run: list[Token], targets: Targets, position: str | None, sentence: tuple[int, int],
             meta: dict[str, Any]) -> None:
    """Records a run of states, one trait per character and target organ, and the presence they imply."""
    for group in by_character(run):
        span = (group[0].start, group[-1].end)
        value = reader.text[span[0]:span[1]]
        terms: list[str] = []
        for token in group:
            for t in token.data.get("terms", [token.value]):
                if t not in terms:
                    terms.append(t)
        character = group[0].character
        for organ, ospan in targets:
            pos = position if position and fits(position, character) else ""
            reader.emit(organ, character, value, span, sentence, terms=terms, negated=bool(meta.get("neg")),
                        modifier=meta.get("mod", ""), degree=meta.get("deg", ""), position=pos, quality=character,
                        organ_span=ospan)
            for term in terms:  # "unarmed" also says: no prickles
                implied = reader.voc.states.get(term, {}).get("implies")
                if implied:
                    part, presence = implied
                    owner = reader.compose(organ, part) if part in reader.voc.relative_parts else part
                    reader.emit(owner, "presence", value, span, sentence, terms=[presence],
                                negated=bool(meta.get("neg")), modifier=meta.get("mod", ""), implied=True)


def emit_measure(reader: Reader, token: Token, targets: Targets, position: str | None, sentence: tuple[int, int],
                 pending: dict[str, Any]) -> None:
    """Records a measurement token for each target organ (the plant when none is in force)."""
    for organ, ospan in targets:
        organ_name = organ or "plant"
        for character, low, high in measured_characters(token.data, organ_name):
            reader.emit(organ_name, character, token.text.strip(), (token.start, token.end), sentence, terms=[],
                        organ_span=ospan, modifier=pending.get("mod", ""),
                        position=position if position in ("apex", "base") else "", quality=character, min_mm=low,
                        max_mm=high, **({"up_to": True} if token.data.get("upto") else {}))
