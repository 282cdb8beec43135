from __future__ import annotations

import pytest

from allocator._budget import BASE_UNITS, COST_KEYS, KINDS, parse_budget, parse_budgets, within
from engine import InvalidSpecError


@pytest.mark.parametrize("text, kind, value", [
    ("4.5bits", "bits", 4.5), ("4 bits", "bits", 4.0), ("12MB", "size", 12e6),
    ("3.5MiB", "size", 3.5 * 2**20), ("800KB", "size", 8e5), ("123456B", "size", 123456),
    ("1.2GBOPs", "bops", 1.2e9), ("950MBOPs", "bops", 9.5e8), ("10BOPs", "bops", 10),
    ("2.5ms", "latency", 2500), ("800us", "latency", 800), (".5ms", "latency", 500),
    ("1e3us", "latency", 1000),
])
def test_grammar(text, kind, value):
    b = parse_budget(text)
    assert b.kind == kind and b.value == pytest.approx(value) and b.text == text


@pytest.mark.parametrize("text", ["", "4.5", "bits", "4.5bats", "-3bits", "0MB", "12 M B", "abc"])
def test_bad_budgets_name_the_text(text):
    with pytest.raises(InvalidSpecError, match="budget"):
        parse_budget(text)


def test_one_budget_per_kind():
    assert [b.kind for b in parse_budgets(["4bits", "2ms"])] == ["bits", "latency"]
    with pytest.raises(InvalidSpecError, match="more than one bits"):
        parse_budgets(["4bits", "5bits"])


def test_holds_is_inclusive():
    b = parse_budget("4bits")
    assert b.holds(4.0) and not b.holds(4.01)


def test_one_tolerance_for_every_budget_check():
    assert within(1.0 + 0.9e-6, 1.0) and not within(1.0 + 1.1e-6, 1.0)
    assert within(1e-12, 0.0) and not within(2e-12, 0.0)
    assert parse_budget("4bits").holds(4.0 * (1 + 0.9e-6))


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_cost_key_and_a_base_unit(kind):
    budget = parse_budget(f"1{BASE_UNITS[kind]}")
    assert (budget.kind, budget.value, budget.cost_key) == (kind, 1.0, COST_KEYS[kind])


@pytest.mark.parametrize("text", ["1e309bits", "1e99999999999bits", "9e300GBOPs"])
def test_a_budget_past_the_float_range_is_a_named_error(text):
    with pytest.raises(InvalidSpecError, match="too large"):
        parse_budget(text)


def test_exponents_read_as_one_number():
    assert parse_budget("1.2e3MB").value == 1.2e9
    with pytest.raises(InvalidSpecError, match="positive"):
        parse_budget("1e-400bits")
