"""Conversations in the LoCoMo file format, read generically (any directory of such files).

Format: `speaker_a`, `speaker_b`, `session_N` (turns `{speaker, dia_id, text, blip_caption?}`),
`session_N_date_time`, and `qa` (`{question, answer, evidence: [dia_id…], category}`).
Only the turns and the questions are read; nothing else in a file is used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SESSION = re.compile(r"^session_(\d+)$")
DIA_ID = re.compile(r"D\d+:\d+")
DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%d %B %Y", "%Y-%m-%d")


@dataclass(frozen=True)
class Turn:
    dia_id: str
    speaker: str
    text: str
    caption: str | None
    session: int
    when: datetime | None

    @property
    def content(self) -> str:
        image = f" [image: {self.caption}]" if self.caption else ""
        return f"{self.speaker}: {self.text}{image}"


@dataclass(frozen=True)
class Question:
    text: str
    evidence: tuple[str, ...]
    category: int


@dataclass(frozen=True)
class Conversation:
    name: str
    turns: list[Turn]
    questions: list[Question]


def parse_when(text: str | None) -> datetime | None:
    """'1:56 pm on 8 May, 2023' → an aware datetime (UTC); None when no known format fits."""
    if not text:
        return None
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def load(path: Path) -> Conversation:
    data = json.loads(path.read_text())
    conv = data.get("conversation", data)  # some copies nest the sessions one level down
    turns: list[Turn] = []
    sessions = sorted((int(m.group(1)), k) for k in conv if (m := SESSION.match(k)))
    for number, key in sessions:
        when = parse_when(conv.get(f"{key}_date_time"))
        for t in conv[key] or []:
            turns.append(Turn(t["dia_id"], t["speaker"], t.get("text", ""), t.get("blip_caption"),
                              number, when))
    known = {t.dia_id for t in turns}
    questions = []
    for qa in data.get("qa", []):
        ids = tuple(dict.fromkeys(x for e in qa.get("evidence", []) for x in DIA_ID.findall(e)))
        ids = tuple(x for x in ids if x in known)
        if ids and qa.get("category") in (1, 2, 3, 4):
            questions.append(Question(qa["question"], ids, int(qa["category"])))
    return Conversation(path.stem, turns, questions)


def load_dir(folder: Path) -> list[Conversation]:
    """Every *.json conversation in the folder, by name; ValueError if there is none."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory (LoCoMo data is in ../shared/data/locomo)")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise ValueError(f"no conversation files (*.json) in {folder}")
    return [load(f) for f in files]
