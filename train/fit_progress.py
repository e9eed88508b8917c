"""Fit many markets with at most K at once, one line per market as it ends, then a summary.

The bound is the resource budget: each market in flight holds its trainer's and its task's
fractional CPUs (or GPU share) on the cluster, so K markets take K times that and the rest wait
here, in the driver, instead of as hundreds of pending Ray tasks and TorchTrainer controllers.
One market's failure is its own line; the others go on, and `FitFailed` names every failure at
the end (after the finished markets are registered, so a rerun skips them).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Protocol


class Verdict(Protocol):
    market: str
    promoted: bool
    skipped: bool


class FitFailed(RuntimeError):
    """Some markets could not be fitted; the others' verdicts are registered and in `verdicts`."""

    def __init__(self, failures: dict[str, str], verdicts: Sequence[Verdict]) -> None:
        super().__init__(
            "; ".join(f"{market}: {why}" for market, why in failures.items())
            + " (the other markets are registered: run the same command again to retry these)"
        )
        self.failures = failures
        self.verdicts = list(verdicts)


def run_bounded(
    markets: list[str],
    fit_one: Callable[[str], Verdict],
    max_concurrent: int,
    skipped: Sequence[Verdict] = (),
    say: Callable[[str], None] = print,
) -> list[Verdict]:
    """`fit_one` each market, at most `max_concurrent` at a time (threads that each drive one
    market's Ray work); the verdicts of `skipped` and fitted markets, in `markets`' order."""
    started = time.perf_counter()
    total = len(markets) + len(skipped)
    count = 0
    for verdict in skipped:
        count += 1
        say(f"{verdict} [{count}/{total}]")
    verdicts: dict[str, Verdict] = {v.market: v for v in skipped}
    failures: dict[str, str] = {}
    with ThreadPoolExecutor(max(1, max_concurrent), thread_name_prefix="fit-market") as pool:
        clocks = {m: time.perf_counter() for m in markets}
        futures = {pool.submit(_timed, fit_one, m, clocks): m for m in markets}
        for future in as_completed(futures):
            market, count = futures[future], count + 1
            took = time.perf_counter() - clocks[market]
            try:
                verdicts[market] = future.result()
                say(f"{verdicts[market]} ({took:.0f} s) [{count}/{total}]")
            except Exception as exc:  # noqa: BLE001 - one market's failure ends no other's fit
                failures[market] = f"{type(exc).__name__}: {exc}"[:500]
                say(f"{market} FAILED after {took:.0f} s: {failures[market]} [{count}/{total}]")
                say(traceback.format_exc(limit=4))
    ordered = [verdicts[m] for m in [*(v.market for v in skipped), *markets] if m in verdicts]
    say(summary(ordered, failures, time.perf_counter() - started, max_concurrent))
    if failures:
        raise FitFailed(failures, ordered)
    return ordered


def _timed(fit_one: Callable[[str], Verdict], market: str, clocks: dict[str, float]) -> Verdict:
    clocks[market] = time.perf_counter()  # the market's own time starts when a slot is free
    return fit_one(market)


def summary(
    verdicts: Sequence[Verdict], failures: dict[str, str], seconds: float, max_concurrent: int
) -> str:
    fitted = [v for v in verdicts if not v.skipped]
    promoted = sum(v.promoted for v in fitted)
    parts = [
        f"{len(fitted)} fitted ({promoted} promoted, {len(fitted) - promoted} kept CURRENT)",
        f"{len(verdicts) - len(fitted)} skipped (already fitted on these candles)",
    ]
    if failures:
        parts.append(f"{len(failures)} failed ({', '.join(failures)})")
    total = len(verdicts) + len(failures)
    return (f"fit summary: {total} markets in {seconds:.0f} s, at most {max_concurrent} at once: "
            + ", ".join(parts))  # fmt: skip
