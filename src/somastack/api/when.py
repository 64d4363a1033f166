"""`When`: how the API reads a date-time."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

_DIGIT = re.compile(r"\d")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return bool(_DIGIT.search(text))


def _not_a_number(v: Any) -> Any:
    """Pydantic reads a number, or a string that is one ("2024", "1.5e9", ".5"), as Unix time:
    2024 would be 33 minutes past midnight on 1 January 1970, silently. A time must be a date."""
    if isinstance(v, int | float) or (isinstance(v, str) and _is_number(v)):
        raise ValueError("a date-time in ISO 8601 (e.g. 2026-11-22T09:30:00Z), not a number")
    return v


def _utc(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=UTC)


# A date-time in ISO 8601 (a bare date is midnight); without a zone it is UTC.
When = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_utc)]
