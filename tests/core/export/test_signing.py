"""The signature chain's canonical envelope is exactly RFC 8785, and the chain detects changes."""

from __future__ import annotations

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from elspeth_core.export.signing import GENESIS, SignatureChain, canonical_envelope

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
records = st.dictionaries(st.text(min_size=1, max_size=20), values, max_size=12)


@settings(max_examples=400)
@given(
    index=st.integers(min_value=0, max_value=2**53 - 1),
    table=st.text(),
    record_id=st.text(),
    record=records,
)
def test_envelope_is_rfc8785_of_the_whole_envelope(
    index: int, table: str, record_id: str, record: dict
) -> None:
    envelope = {"index": index, "table": table, "id": record_id, "record": record}
    assert canonical_envelope(index, table, record_id, record) == rfc8785.dumps(envelope)


@given(record=records, other=values)
def test_any_change_of_a_value_changes_the_signature(record: dict, other: object) -> None:
    chain = SignatureChain(b"key")
    signed = chain.link(0, "rows", "r1", record)
    for column, value in record.items():
        if rfc8785.dumps(value) == rfc8785.dumps(other):
            continue
        changed = {**record, column: other}
        assert SignatureChain(b"key").link(0, "rows", "r1", changed) != signed
    assert SignatureChain(b"other key").link(0, "rows", "r1", record) != signed
    assert SignatureChain(None).link(0, "rows", "r1", record) != signed
    assert chain.previous == signed != GENESIS
