"""The ``pseudonymize`` transform: replace identifying fields by an iterated, salted digest.

Regulated pipelines often must not carry raw identifiers downstream. PBKDF2-HMAC-SHA256 with a
configurable number of rounds makes the digest costly to brute-force — and makes this transform
deliberately CPU-heavy, which is also why it is the reference workload for partitioned execution.
It never touches the landscape.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

from pydantic import Field

from elspeth_core.plugins.protocols import Row, TransformResult
from elspeth_core.plugins.transforms import TransformOptions, _Transform


class PseudonymizeOptions(TransformOptions):
    fields: list[str] = Field(min_length=1)
    rounds: int = Field(default=1000, ge=1, le=10_000_000)
    salt: str = ""
    missing: str = "fail"  # fail | keep


class Pseudonymize(_Transform):
    """Each listed field becomes ``hex(pbkdf2_hmac(sha256, str(value), salt, rounds))``."""

    name: ClassVar[str] = "pseudonymize"
    config_model: ClassVar[type[TransformOptions]] = PseudonymizeOptions

    def process(self, row: Row) -> TransformResult:
        cfg: Any = self.config
        out = dict(row)
        salt = cfg.salt.encode()
        for field in cfg.fields:
            if field not in row or row[field] is None:
                if cfg.missing == "fail":
                    return TransformResult.fail(f"field '{field}' is missing")
                continue
            digest = hashlib.pbkdf2_hmac("sha256", str(row[field]).encode(), salt, cfg.rounds)
            out[field] = digest.hex()
        return TransformResult.ok(out)
