"""The bearer token that guards every HTTP route which changes state or shows account data.

It comes from the environment only (`HYBRID_ADMIN_TOKEN`); without it those routes refuse (503),
so an unconfigured deployment never exposes them. Compared in constant time.
"""

from __future__ import annotations

import hmac
import os

from fastapi import HTTPException

ADMIN_TOKEN_ENV = "HYBRID_ADMIN_TOKEN"


def check_admin(authorization: str | None) -> None:
    expected = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not expected:
        raise HTTPException(503, f"admin endpoints are off: {ADMIN_TOKEN_ENV} is not set")
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong bearer token")
