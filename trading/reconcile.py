"""Reconcile a live account with the exchange when the loop starts, and halt what disagrees.

The ledger and the exchange can disagree after a crash (an order sent, its fill never recorded),
a lost reply, or a person trading by hand while the loop was down. Before its first hour, a loop
whose broker is durable (Upbit) therefore:
1. settles every order the ledger left open (pending, sent, unknown): each identifier is looked
   up for up to `loop.order_lookup_s`; found, it is settled; still nowhere, it is marked
   `unknown` and its market halts (`trading.execution`): it is never sent again;
2. lists the orders open at the exchange: one the ledger does not know halts its market;
3. compares every traded coin's balance (free + locked) with what the ledger expects: the last
   balance snapshot plus the fills recorded after it. A difference halts that market.
A halted market sends nothing (no buys, no sells, no protective exits: its state is in doubt)
until a person checks the exchange and acknowledges it:
`python -m trading reconcile --ack --by NAME` (recorded in the ledger). KRW is not compared: a
deposit or a withdrawal changes no market's position. The paper broker is rebuilt from the
ledger's fills, so there is nothing to reconcile in paper mode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime

from trading.account import ArmAccount
from trading.broker import BrokerBanned, BrokerError
from trading.ledger import Ledger
from trading.paper import currency_of

log = logging.getLogger(__name__)
VOLUME_TOLERANCE = 1e-8  # Upbit's volume step: smaller differences are float residue


def durable_accounts(accounts: Mapping[tuple[str, str], ArmAccount]) -> list[ArmAccount]:
    return [account for account in accounts.values() if account.broker.durable]


def halt(ledger: Ledger, market: str, reason: str) -> None:
    """Halt `market` with an alarm in the log (and in the loop's status, from the ledger)."""
    if ledger.halts.halt(market, reason):
        log.critical("%s HALTED until acknowledged (python -m trading reconcile --ack --by "
                     "NAME): %s", market, reason)  # fmt: skip


def settle_open_orders(
    ledger: Ledger, accounts: Mapping[tuple[str, str], ArmAccount], hour: datetime
) -> None:
    """Look every open ledger order up; one market's failure halts that market only."""
    for record in ledger.pending_orders():
        account = accounts.get((record.arm, record.market))
        if account is None:
            continue
        try:
            done = account.reconcile(record, hour, ledger)
        except BrokerBanned:
            raise
        except Exception as exc:  # noqa: BLE001 - one order's trouble halts one market
            halt(ledger, record.market, f"order {record.identifier}: reconcile failed: {exc}")
            continue
        if done.unknown:
            halt(ledger, record.market, done.unknown)


def reconcile_at_start(
    ledger: Ledger, accounts: Mapping[tuple[str, str], ArmAccount], hour: datetime
) -> None:
    """Steps 1-3 of the module docstring for the live account; BrokerError when the exchange
    cannot be read at all (the caller retries next hour and trades nothing meanwhile)."""
    live = durable_accounts(accounts)
    if not live:
        return
    settle_open_orders(ledger, accounts, hour)
    broker, arm = live[0].broker, live[0].arm
    markets = sorted({a.market for a in live})
    for order in getattr(broker, "open_orders", list)():
        known = order.identifier and ledger.order(order.identifier, arm) is not None
        if order.market in markets and not known:
            halt(ledger, order.market, (
                f"an order open at the exchange that the ledger does not know: "
                f"{order.identifier or order.uuid} ({order.side.value})"
            ))  # fmt: skip
    for market, text in balance_differences(ledger, broker.balances(), markets, arm).items():
        halt(ledger, market, text)


def balance_differences(ledger: Ledger, balances, markets: list[str], arm: str) -> dict[str, str]:
    """market -> what differs, for every traded coin the exchange holds otherwise than expected."""
    snapshot = ledger.snapshots.latest()
    base = dict(snapshot.balances) if snapshot else {}
    net = ledger.snapshots.net_fills_since(snapshot.fills_seen if snapshot else 0, arm)
    since = f"the snapshot of {snapshot.time}" if snapshot else "an empty account"
    found = {}
    for market in markets:
        coin = currency_of(market)
        held = balances.get(coin)
        have = held.balance + held.locked if held else 0.0
        expected = base.get(coin, 0.0) + net.get(market, 0.0)
        if not math.isclose(have, expected, rel_tol=1e-9, abs_tol=VOLUME_TOLERANCE):
            found[market] = (
                f"the exchange holds {have:.8f} {coin}, the ledger expects {expected:.8f} "
                f"({since} plus the fills recorded since)"
            )
    return found


def start_or_retry(
    ledger: Ledger, accounts: Mapping[tuple[str, str], ArmAccount], hour: datetime
) -> str:
    """Run `reconcile_at_start`; "" when done, else why not (the hour then trades nothing)."""
    try:
        reconcile_at_start(ledger, accounts, hour)
    except BrokerBanned:
        raise
    except BrokerError as exc:
        log.error("reconciling with the exchange failed: %s", exc)
        return f"not reconciled with the exchange yet ({exc}); trying again next hour"
    return ""
