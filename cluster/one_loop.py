"""One loop, one mode: what `python -m cluster up` checks before it starts anything.

A cluster runs one trading loop, and a ledger has one loop (its lease, `trading.ledger_books`).
`up --paper` against a running live loop (or `--live` against paper) refuses, naming the running
mode, instead of reporting one mode while the other trades; a ledger another cluster's loop holds
refuses, naming that loop. A live loop's Upbit keys go to its own process only.
"""

from __future__ import annotations

import os
from pathlib import Path

from cluster.local import UpError


def loop_keys(mode: str) -> dict[str, str] | None:
    """A live loop's Upbit keys, for its own runtime environment only (the head never gets
    them: `cluster.local_ray.head_env`)."""
    if mode != "live":
        return None
    from cluster.local_ray import LOOP_ONLY_ENV

    return {name: os.environ[name] for name in LOOP_ONLY_ENV}


def live_lease(ledger: str):
    """The lease of the loop that trades on `ledger` now, or None (no file, none, expired)."""
    if not Path(ledger).is_file():
        return None
    from features.exchange import now_kst
    from trading.ledger import Ledger

    with Ledger(ledger) as opened:
        lease = opened.lease.current()
    return lease if lease is not None and lease.live(now_kst()) else None


def refuse_held_ledger(mode: str, ledger: str, joining: bool) -> None:
    """Before anything starts: a loop of the other mode trading on this ledger refuses `up`, and
    so does any live lease when `up` starts a fresh head (no loop of its own can hold it)."""
    from features.exchange import now_kst

    lease = live_lease(ledger)
    if lease is None:
        return
    if lease.mode != mode:
        raise UpError(
            f"a {lease.mode} trading loop is running on {ledger}: {lease.describe(now_kst())}. "
            f"`up --{mode}` would report {mode} trading while {lease.mode} trades; stop it first "
            "(python -m cluster down)"
        )
    if not joining:
        raise UpError(
            f"another trading loop holds {ledger}: {lease.describe(now_kst())}; one loop per "
            "ledger: stop it first, or use another --ledger"
        )


def refuse_other_loop(mode: str, ledger: str) -> None:
    """Joined to a running cluster: its loop must be this mode on this ledger, and the ledger's
    lease must be that loop's (not another cluster's)."""
    import ray

    from features.exchange import now_kst
    from trading.loop import get_loop

    try:
        running = ray.get(get_loop().status.remote(), timeout=60)
    except ValueError:
        running = None
    if running is not None and (running["mode"], running["ledger"]) != (mode, ledger):
        raise UpError(
            f"a {running['mode']} trading loop is running in this cluster on "
            f"{running['ledger']}: `up --{mode}` on {ledger} refused (one loop per cluster); "
            "stop it first (python -m cluster down)"
        )
    lease = live_lease(ledger)
    if lease is not None and (running is None or running.get("holder") != lease.holder):
        raise UpError(
            f"another trading loop holds {ledger}: {lease.describe(now_kst())}; one loop per "
            "ledger: stop it first, or use another --ledger"
        )
