"""The price table: parsing the configured mapping, and pricing a quantity of usage."""

from __future__ import annotations

from decimal import Decimal

import pytest

from somastack.config import Settings
from somastack.errors import InvalidInput
from somastack.ledger import Amounts, PriceTable
from somastack.ledger.pricing import MB


def test_default_table_from_settings_prices_every_dimension() -> None:
    prices = PriceTable.from_mapping(Settings().price_table)
    a = prices.charge(tokens=2000, tool_calls=2, egress_bytes=MB, storage_bytes=2 * MB)
    assert a == Amounts(2000, 2, 2 * MB, MB, Decimal("0.44"))  # 0.2 + 0.1 + 0.1 + 0.04


def test_provider_override_and_extra_cents() -> None:
    prices = PriceTable.from_mapping({"tokens_per_1k": 1, "tokens_per_1k:openai": "15"})
    assert prices.charge(tokens=1000).cost_cents == Decimal(1)
    assert prices.charge(tokens=1000, provider="openai").cost_cents == Decimal(15)
    assert prices.charge(tool_calls=1, extra_cents=0.25).cost_cents == Decimal("0.25")


@pytest.mark.parametrize(("table", "field"), [
    ({"tokens": 1}, "price_table.tokens"),
    ({"tool_call": -1}, "price_table.tool_call"),
    ({"egress_per_mb": "lots"}, "price_table.egress_per_mb"),
    ({"tokens_per_1k:": 1}, "price_table.tokens_per_1k:"),
])
def test_bad_price_table_names_the_key(table: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        PriceTable.from_mapping(table)  # type: ignore[arg-type]
    assert err.value.field == field


def test_negative_amounts_are_refused() -> None:
    with pytest.raises(InvalidInput) as err:
        Amounts(tokens=-1)
    assert err.value.field == "tokens"
