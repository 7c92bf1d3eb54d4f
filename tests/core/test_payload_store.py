"""The filesystem payload store (``elspeth_core.payloads``) on real pack files.

A read verifies the payload's canonical hash; bytes altered on disk — a changed value, bytes that
no longer decode, a pack cut short — are refused with ``PayloadIntegrityError`` (never a raw
``JSONDecodeError``, which the CLI could only report as an internal error). A purged payload
reads as ``None``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from elspeth_core.errors import ElspethError
from elspeth_core.hashing import stable_hash
from elspeth_core.payloads import PayloadIntegrityError, PayloadStore

ROWS = [
    {"id": 1, "amount": 10.5, "name": "alpha é"},
    {"id": 2, "amount": 1.0, "name": "beta", "items": [1, 2, {"x": None}]},
    {"id": 3, "amount": 30.25, "name": "gamma"},
]


def _store(base: Path) -> tuple[PayloadStore, list[str]]:
    store = PayloadStore(base)
    store.open_pack("run-1", 1)
    refs = [store.put(row) for row in ROWS]
    store.sync()
    store.close()
    return PayloadStore(base), refs


def _pack(base: Path, ref: str) -> tuple[Path, int, int]:
    name, offset, length = ref.rsplit(":", 2)
    return base / name, int(offset), int(length)


def _overwrite(base: Path, ref: str, new: bytes) -> None:
    path, offset, length = _pack(base, ref)
    data = bytearray(path.read_bytes())
    assert len(new) == length
    data[offset : offset + length] = new
    path.write_bytes(bytes(data))


def test_payloads_read_back_verified_and_type_preserving(tmp_path: Path) -> None:
    store, refs = _store(tmp_path)
    for ref, row in zip(refs, ROWS, strict=True):
        value = store.get(ref, stable_hash(row))
        assert value == row
        assert isinstance(value["amount"], float)  # 1.0 stays a float
    store.close()


def test_a_changed_value_is_refused_by_its_hash(tmp_path: Path) -> None:
    store, refs = _store(tmp_path)
    path, offset, length = _pack(tmp_path, refs[0])
    original = path.read_bytes()[offset : offset + length]
    _overwrite(tmp_path, refs[0], original.replace(b'"id":1', b'"id":7'))
    with pytest.raises(PayloadIntegrityError) as caught:
        store.get(refs[0], stable_hash(ROWS[0]))
    assert isinstance(caught.value, ElspethError)
    assert f"payload {refs[0]} does not match its recorded hash" in caught.value.message
    assert stable_hash(ROWS[0])[:12] in caught.value.message
    assert caught.value.hint and "payload store was modified" in caught.value.hint
    # Its neighbours are untouched and still verify.
    assert store.get(refs[1], stable_hash(ROWS[1])) == ROWS[1]
    assert store.get(refs[2], stable_hash(ROWS[2])) == ROWS[2]
    store.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b"#" + b[1:],  # not JSON any more
        lambda b: b.replace(b"beta", b"b\xffta"),  # not UTF-8 any more
        lambda b: b.replace(b'"amount":1.0,', b'"amount":NaN,'),  # JSON canonical hashing refuses
    ],
    ids=["not_json", "not_utf8", "nan"],
)
def test_bytes_that_no_longer_decode_are_refused_as_damaged(tmp_path: Path, damage: object) -> None:
    store, refs = _store(tmp_path)
    path, offset, length = _pack(tmp_path, refs[1])
    original = path.read_bytes()[offset : offset + length]
    damaged = damage(original)  # type: ignore[operator]
    assert damaged != original
    _overwrite(tmp_path, refs[1], damaged)
    with pytest.raises(PayloadIntegrityError) as caught:
        store.get(refs[1], stable_hash(ROWS[1]))
    assert caught.value.message.startswith(f"payload {refs[1]} is damaged: ")
    assert "\n" not in caught.value.message
    assert caught.value.hint and "payload store was modified" in caught.value.hint
    store.close()


def test_a_pack_cut_short_is_refused_as_damaged(tmp_path: Path) -> None:
    store, refs = _store(tmp_path)
    path, offset, length = _pack(tmp_path, refs[2])
    path.write_bytes(path.read_bytes()[: offset + length - 5])
    with pytest.raises(PayloadIntegrityError, match="is damaged: the pack ends 5 bytes short"):
        store.get(refs[2], stable_hash(ROWS[2]))
    assert store.get(refs[0], stable_hash(ROWS[0])) == ROWS[0]
    store.close()


def test_a_purged_payload_reads_as_none(tmp_path: Path) -> None:
    store, refs = _store(tmp_path)
    assert store.get(None, stable_hash(ROWS[0])) is None  # the ref was cleared by purge
    store.delete_run("run-1")
    assert store.get(refs[0], stable_hash(ROWS[0])) is None  # the pack was deleted
    store.close()
