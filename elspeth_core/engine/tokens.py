"""Tokens: one row's instance on one path through the DAG, with its current data and hash."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from elspeth_core.hashing import stable_hash


@dataclass(slots=True)
class Token:
    token_id: str
    row_id: str
    row_index: int
    data: dict[str, Any]
    data_hash: str | None = None
    branch: str | None = None
    fork_group_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """Canonical hash of the current data, computed once per distinct data."""
        if self.data_hash is None:
            self.data_hash = stable_hash(self.data)
        return self.data_hash

    def replace_data(self, data: dict[str, Any]) -> None:
        if data is not self.data:
            self.data = data
            self.data_hash = None
