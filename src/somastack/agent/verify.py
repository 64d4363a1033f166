"""The turn's verify step: is the answer backed by the recalled evidence and the tool results?

The check is lexical and deterministic (no second model call, so it costs microseconds and
cannot itself hallucinate):
- **claims**: the answer's content words (3+ letters, not stop words) and its numbers;
- **support**: the share of those content words found in the grounds (evidence, tool results and
  the user's own input);
- **numbers**: every number in the answer must appear in the grounds; one that does not is listed
  in `unsupported_numbers` (the commonest way a small model invents facts);
- **citations**: the evidence ids and tool call ids that share at least two content words or a
  number with the answer;
- **verdict**: `supported` (support ≥ 0.6 and no unsupported number), `partial` (support ≥ 0.3),
  `unsupported` otherwise, or `ungrounded` when there was nothing to check against.
Tool calls are also listed with whether they finished and their result passed its schema.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

WORD = re.compile(r"[a-z][a-z'-]{2,}")
NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
STOP = frozenset("""the and for are but not you all any can had her was one our out day get has
him his how man new now old see two way who boy did its let put say she too use that with have
this will your from they know want been good much some time very when come here just like long
make many more only over such take than them well were what which their there would about could
other these into also after then most being where does each those while should because
answer answers result results output based according information question tool""".split())
SUPPORTED, PARTIAL = 0.6, 0.3


@dataclass(frozen=True)
class Ground:
    """A piece of text the answer may rest on: a memory or a tool result."""

    kind: str  # "memory" | "tool"
    id: str
    text: str


def content_words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in STOP}


def numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in NUMBER.findall(text)}


def verify(answer: str, user_input: str, grounds: list[Ground],
           tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The verify event's data for this answer (see the module docstring for the check)."""
    words, nums = content_words(answer), numbers(answer)
    basis_words = content_words(user_input)
    basis_nums = numbers(user_input)
    citations = []
    for g in grounds:
        gw, gn = content_words(g.text), numbers(g.text)
        basis_words |= gw
        basis_nums |= gn
        if len(words & gw) >= 2 or (nums & gn):
            citations.append({"kind": g.kind, "id": g.id})
    support = len(words & basis_words) / len(words) if words else 1.0
    unsupported_numbers = sorted(nums - basis_nums)
    if not grounds:
        verdict = "ungrounded"
    elif support >= SUPPORTED and not unsupported_numbers:
        verdict = "supported"
    elif support >= PARTIAL:
        verdict = "partial"
    else:
        verdict = "unsupported"
    return {
        "check": "lexical: answer content words and numbers against evidence and tool results",
        "verdict": verdict, "support": round(support, 3),
        "unsupported_numbers": unsupported_numbers, "citations": citations,
        "tools": [{"call_id": c["call_id"], "tool": c["tool"], "ok": c["ok"]} for c in tool_calls],
    }


def tool_text(result: Any, limit: int) -> str:
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    return text[:limit]
