"""The price table (cents), from SOMA_PRICE_TABLE: what a quantity of each dimension costs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from somastack.errors import InvalidInput
from somastack.ledger.usage import Amounts

MB = 1024 * 1024
KEYS = ("tokens_per_1k", "tool_call", "egress_per_mb", "storage_per_mb")
PROVIDER_PREFIX = "tokens_per_1k:"


@dataclass(frozen=True)
class PriceTable:
    tokens_per_1k: Decimal = Decimal(0)
    tool_call: Decimal = Decimal(0)
    egress_per_mb: Decimal = Decimal(0)
    storage_per_mb: Decimal = Decimal(0)
    provider_tokens_per_1k: dict[str, Decimal] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, table: Mapping[str, float | int | str]) -> PriceTable:
        """Parse the configured table; an unknown key or a negative price names the key."""
        prices: dict[str, Decimal] = {}
        providers: dict[str, Decimal] = {}
        for key, raw in table.items():
            try:
                price = Decimal(str(raw))
            except ArithmeticError as exc:
                raise InvalidInput("not a number", field=f"price_table.{key}") from exc
            if not price.is_finite() or price < 0:
                raise InvalidInput("must be a finite price >= 0", field=f"price_table.{key}")
            if key in KEYS:
                prices[key] = price
            elif key.startswith(PROVIDER_PREFIX) and len(key) > len(PROVIDER_PREFIX):
                providers[key.removeprefix(PROVIDER_PREFIX)] = price
            else:
                raise InvalidInput(f"unknown price; expected one of {', '.join(KEYS)} or "
                                   f"{PROVIDER_PREFIX}<provider>", field=f"price_table.{key}")
        return cls(**prices, provider_tokens_per_1k=providers)

    def charge(self, *, tokens: int = 0, tool_calls: int = 0, storage_bytes: int = 0,
               egress_bytes: int = 0, provider: str | None = None,
               extra_cents: Decimal | float = 0) -> Amounts:
        """The amounts of this usage with its cost: Σ quantity × price, plus `extra_cents`."""
        per_1k = self.provider_tokens_per_1k.get(provider or "", self.tokens_per_1k)
        cost = (per_1k * tokens / 1000 + self.tool_call * tool_calls
                + self.egress_per_mb * egress_bytes / MB + self.storage_per_mb * storage_bytes / MB
                + Decimal(str(extra_cents)))
        return Amounts(tokens, tool_calls, storage_bytes, egress_bytes,
                       cost.quantize(Decimal("0.000001")))
