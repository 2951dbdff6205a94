from __future__ import annotations

import datetime
import json
import math

import blake3
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from wakeline.producers import NotSerialisable, PayloadTooLarge, canonical_json, canonicalise
from wakeline.producers.canonical import REDACTED

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_canonical_json_is_exactly_rfc8785(value):
    try:
        want = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(NotSerialisable):
            canonical_json(value)
        return
    assert canonical_json(value) == want


def test_same_call_same_digest_whatever_the_order_and_spelling():
    a = canonicalise({"amount": 12.0, "customer": "c-1", "meta": {"x": 1, "y": [1, 2]}})
    b = canonicalise({"meta": {"y": [1, 2], "x": 1}, "customer": "c-1", "amount": 12})
    assert a.json == b.json == b'{"amount":12,"customer":"c-1","meta":{"x":1,"y":[1,2]}}'
    assert a.digest == b.digest == blake3.blake3(a.json).digest()
    assert len(a.digest) == 32
    assert canonicalise({"amount": 13}).digest != a.digest


def test_known_digest_is_stable():
    c = canonicalise({"b": 2, "a": "é"})
    assert c.json == '{"a":"é","b":2}'.encode()
    assert c.digest.hex() == blake3.blake3(c.json).hexdigest()


def test_redacted_and_digested_fields_never_appear_in_the_canonical_args():
    args = {
        "card": {"number": "4111111111111111", "cvc": "737"},
        "token": "sk_live_SECRET",
        "items": [{"pin": "0000"}, {"pin": "1234"}],
        "amount": 5,
    }
    c = canonicalise(args, redact=["card.cvc", "items.pin"], digest_only=["token", "card.number"])
    text = c.text
    for secret in ("4111111111111111", "737", "sk_live_SECRET", "0000", "1234"):
        assert secret not in text
    logged = json.loads(text)
    assert logged["card"]["cvc"] == REDACTED
    assert logged["items"] == [{"pin": REDACTED}, {"pin": REDACTED}]
    expected = "blake3:" + blake3.blake3(rfc8785.dumps("sk_live_SECRET")).hexdigest()
    assert logged["token"] == expected
    assert logged["amount"] == 5
    assert args["card"]["cvc"] == "737"  # the caller's arguments are untouched


def test_unserialisable_argument_names_the_field():
    with pytest.raises(NotSerialisable) as e:
        canonicalise({"items": [{"ok": 1}, {"when": datetime.date(2026, 1, 1)}]})
    assert e.value.path == "$.items[1].when"
    assert "date" in str(e.value)


@pytest.mark.parametrize(
    ("args", "path", "reason"),
    [
        ({"x": math.nan}, "$.x", "not representable"),
        ({"x": 2**60}, "$.x", "interoperable range"),
        ({"x": {1: "a"}}, "$.x[1]", "keys must be strings"),
        ({"x": b"bytes"}, "$.x", "bytes"),
        ({"x": {1, 2}}, "$.x", "set"),
    ],
)
def test_each_kind_of_bad_value(args, path, reason):
    with pytest.raises(NotSerialisable) as e:
        canonicalise(args)
    assert e.value.path == path
    assert reason in str(e.value)


def test_self_referencing_args_are_refused_not_hung():
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(NotSerialisable):
        canonicalise({"a": loop})


def test_non_mapping_args_are_refused():
    with pytest.raises(NotSerialisable, match="mapping"):
        canonicalise(["a"])  # type: ignore[arg-type]


def test_oversized_payload_is_refused_with_size_and_limit():
    with pytest.raises(PayloadTooLarge) as e:
        canonicalise({"blob": "x" * 2000}, max_bytes=1000)
    assert e.value.limit == 1000
    assert e.value.size > 2000
    assert canonicalise({"blob": "x" * 900}, max_bytes=1000)


simple_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(),  # any code point: control characters, U+2028, non-BMP, lone surrogates
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(st.text(alphabet=st.characters(max_codepoint=127)), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=500)
@given(simple_values)
def test_the_stdlib_fast_path_is_byte_equal_to_rfc8785(value):
    """The values canonical_json writes with the stdlib C encoder, not rfc8785."""
    try:
        want = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(NotSerialisable):
            canonical_json(value)
        return
    assert canonical_json(value) == want
