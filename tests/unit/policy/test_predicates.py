"""Argument predicates: what each operator holds for, that a missing path is false, that
evaluation never raises on any arguments, and that a bad expression names its column."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wakeline.policy.predicates import PolicyError, compile_condition

CASES = [
    ("amount > 500", {"amount": 501}, True),
    ("amount > 500", {"amount": 500}, False),
    ("amount > 500", {"amount": "900"}, False),
    ("amount > 0", {"amount": True}, False),
    ("amount >= 500", {"amount": 500.0}, True),
    ("amount <= 100", {"amount": 100}, True),
    ("amount <= 100", {"amount": 101}, False),
    ("amount < 1.5", {"amount": 1}, True),
    ('currency in ["USD","EUR"]', {"currency": "EUR"}, True),
    ('currency in ["USD","EUR"]', {"currency": "GBP"}, False),
    ("n in [1, 2]", {"n": 1.0}, True),
    ("n in [1, 2]", {"n": True}, False),
    ('to ends_with "@example.com"', {"to": "bob@example.com"}, True),
    ('to ends_with "@example.com"', {"to": "bob@example.com.evil"}, False),
    ('to ends_with "@example.com"', {"to": ["bob@example.com"]}, False),
    ('name starts_with "tmp-"', {"name": "tmp-1"}, True),
    ('name starts_with "tmp-"', {"name": "x-tmp-1"}, False),
    ('note contains "urgent"', {"note": "very urgent!"}, True),
    ('tags contains "prod"', {"tags": ["dev", "prod"]}, True),
    ('tags contains "prod"', {"tags": ["dev"]}, False),
    ("tags contains 1", {"tags": [True]}, False),
    ('customer.tier == "gold"', {"customer": {"tier": "gold"}}, True),
    ('customer.tier == "gold"', {"customer": "gold"}, False),
    ("flag == true", {"flag": 1}, False),
    ("flag == true", {"flag": True}, True),
    ("x == null", {"x": None}, True),
    ('meta == {"a": [1]}', {"meta": {"a": [1.0]}}, True),
    ('mode != "dry-run"', {"mode": "live"}, True),
    ('mode != "dry-run"', {"mode": "dry-run"}, False),
    ('mode != "dry-run"', {}, False),  # a missing path is false, even for !=
    ("meta.ticket exists", {"meta": {"ticket": None}}, True),
    ("meta.ticket exists", {"meta": {}}, False),
    ("items.1.sku == 7", {"items": [{"sku": 1}, {"sku": 7}]}, True),
    ("items.5.sku == 7", {"items": [{"sku": 7}]}, False),
    ("amount > 500", {}, False),
    ("a.b.c > 1", {"a": {"b": 3}}, False),
]


@pytest.mark.parametrize(("text", "args", "expected"), CASES)
def test_operators(text: str, args: dict, expected: bool) -> None:
    assert compile_condition(text)(args) is expected


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("amount >", 9, "needs a JSON value"),
        ("amount ~ 5", 8, "expected an operator"),
        ("  > 5", 3, "expected an argument path"),
        ('amount > "5"', 10, "compares with a number"),
        ("currency in 'USD'", 13, "not a JSON value"),
        ('currency in "USD"', 13, "needs a JSON array"),
        ("to ends_with 5", 14, "needs a JSON string"),
        ("amount > 5 6", 12, "not a JSON value"),
        ("x exists 1", 10, "takes no value"),
    ],
)
def test_bad_expressions_name_their_column(text: str, column: int, words: str) -> None:
    with pytest.raises(PolicyError) as e:
        compile_condition(text)
    assert e.value.column == column, str(e.value)
    assert words in e.value.reason


def test_error_placed_in_a_file() -> None:
    with pytest.raises(PolicyError) as e:
        compile_condition("amount ~ 5")
    placed = e.value.at(12, 20)
    assert (placed.line, placed.column) == (12, 27)
    assert str(placed).startswith("12:27: expected an operator")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
CONDITIONS = [
    "a > 1",
    "a.b <= 2",
    'a in [1, "x", [1]]',
    'a ends_with "x"',
    'a starts_with "x"',
    'a contains "x"',
    "a contains [1]",
    "a.0 == 1",
    'a != {"b": 1}',
    "a.b.c exists",
]


@settings(max_examples=200, deadline=None)
@given(args=st.dictionaries(st.sampled_from(["a", "b"]), JSON) | JSON)
def test_evaluation_never_raises(args: object) -> None:
    for text in CONDITIONS:
        assert compile_condition(text)(args) in (True, False)  # type: ignore[arg-type]
