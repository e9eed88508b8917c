"""`python -m trading backtest|status|ab-report|replay|switch`: backtest, watch and check trading.

    python -m trading status --ledger runs/ledger.sqlite        (no Ray needed: reads the ledger)
    python -m trading ab-report --ledger runs/ledger.sqlite --out runs/ab
    python -m trading replay --ledger runs/ledger.sqlite --data-dir DIR --registry DIR
    python -m trading switch --off --by alice --reason "exchange incident"   (the running loop)
    python -m trading reconcile --ledger runs/ledger.sqlite     (halted markets, unknown orders)
    python -m trading reconcile --ack --by alice [--market KRW-BTC]   (a person checked Upbit)

    python -m trading backtest --markets KRW-BTC,KRW-ETH --data-dir ../shared/data/ohlcv \\
        --registry registry [--version v0003] [--arm fixed|rule|both] [--out runs/backtest] \\
        [--set risk.max_drawdown=0.3] [--set sizing.rule.kelly_fraction=0.25]

`--set` overrides configs/trading.yaml; keys under `sizing.` override configs/sizing.yaml (the
rule arm's settings). Every error that a user can fix (unknown market, no CURRENT model, missing
data, a bad override) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from features.config import CONFIG_DIR, PROJECT_ROOT, ConfigError
from features.sources import ParquetDirSource
from serve.sizing import load_sizing_config
from trading.ab_report import ab_report, format_report, write_ab_report
from trading.backtest import ARMS, arm_sources, run_backtest
from trading.backtest_report import format_table, summarize, write_report
from trading.config import load_trading_config
from trading.ledger import Ledger
from trading.monitor import summary
from train.registry import ModelRegistry, RegistryError

SIZING_PREFIX = "sizing."


def _add_backtest(sub: argparse._SubParsersAction) -> None:
    bt = sub.add_parser("backtest", help="replay history on out-of-sample predictions")
    bt.add_argument("--markets", required=True, help="comma-separated, e.g. KRW-BTC,KRW-ETH")
    bt.add_argument("--data-dir", required=True, help="folder or URI of <MARKET>_minute60.parquet")
    bt.add_argument("--registry", required=True, help="model registry root: path or URI")
    bt.add_argument("--version", help="bundle version for every market (default: CURRENT)")
    bt.add_argument("--arm", choices=[*ARMS, "both"], default="both", help="sizing arm(s)")
    bt.add_argument("--out", default=str(PROJECT_ROOT / "runs" / "backtest"), help="output dir")
    bt.add_argument("--trading-config", default=str(CONFIG_DIR / "trading.yaml"))
    bt.add_argument("--sizing-config", default=str(CONFIG_DIR / "sizing.yaml"))
    bt.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override trading.yaml (e.g. risk.max_drawdown=0.3) or, under sizing., sizing.yaml",
    )


def _add_ledger_commands(sub: argparse._SubParsersAction) -> None:
    ledger = str(PROJECT_ROOT / "runs" / "ledger.sqlite")
    status = sub.add_parser("status", help="equity, return, drawdown, accuracy from the ledger")
    status.add_argument("--ledger", default=ledger)
    status.add_argument("--json", action="store_true")
    ab = sub.add_parser("ab-report", help="LLM-sized arm vs fixed-ratio arm, table and plot")
    ab.add_argument("--ledger", default=ledger)
    ab.add_argument("--out", default=str(PROJECT_ROOT / "runs" / "ab"))
    rp = sub.add_parser("replay", help="re-run recorded hours through the backtester; diff")
    rp.add_argument("--ledger", default=ledger)
    rp.add_argument("--data-dir", required=True)
    rp.add_argument("--registry", required=True)
    sw = sub.add_parser("switch", help="turn the running loop's trading off or back on")
    onoff = sw.add_mutually_exclusive_group(required=True)
    onoff.add_argument("--on", action="store_true")
    onoff.add_argument("--off", action="store_true")
    sw.add_argument("--by", required=True, help="who decided (kept in the ledger)")
    sw.add_argument("--reason", default="switched off by a person")
    sw.add_argument("--address", default="auto", help="Ray address")
    rc = sub.add_parser(
        "reconcile", help="halted markets and orders of unknown outcome; --ack ends the halts"
    )
    rc.add_argument("--ledger", default=ledger)
    rc.add_argument("--ack", action="store_true", help="a person has checked the exchange")
    rc.add_argument("--by", help="who checked (kept in the ledger); needed with --ack")
    rc.add_argument("--market", help="acknowledge this market only (default: every halted one)")
    for parser in (status, ab, rp):
        parser.add_argument("--trading-config", default=str(CONFIG_DIR / "trading.yaml"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trading", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_backtest(sub)
    _add_ledger_commands(sub)
    return parser.parse_args(argv)


def _markets(text: str, data_dir: str) -> list[str]:
    markets = [m.strip() for m in text.split(",") if m.strip()]
    if not markets:
        raise ConfigError("--markets names no market")
    known = ParquetDirSource(data_dir).markets()
    unknown = [m for m in markets if m not in known]
    if unknown:
        raise LookupError(
            f"unknown market(s) {', '.join(unknown)}: no candles in {data_dir}; "
            f"found {', '.join(known) or 'none'}"
        )
    return markets


def cmd_backtest(args: argparse.Namespace) -> int:
    sizing_sets = [s[len(SIZING_PREFIX) :] for s in args.set if s.startswith(SIZING_PREFIX)]
    trading_sets = [s for s in args.set if not s.startswith(SIZING_PREFIX)]
    config = load_trading_config(args.trading_config, trading_sets)
    sizing = load_sizing_config(args.sizing_config, sizing_sets)
    markets = _markets(args.markets, args.data_dir)
    sources = arm_sources(config, sizing)
    arms = sources if args.arm == "both" else {args.arm: sources[args.arm]}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="backtest-bundles-") as tmp:
        result = run_backtest(
            markets,
            ParquetDirSource(args.data_dir),
            ModelRegistry(args.registry),
            config,
            arms,
            Path(tmp),
            args.version,
        )
    paths = write_report(result, Path(args.out))
    print(format_table(summarize(result)))
    hours = result.hours_replayed
    seconds = time.perf_counter() - started
    stages = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f} s" for k, v in result.timings.items())
    print(f"\n{hours:,} market-hours replayed in {seconds:.1f} s ({hours / seconds:,.0f} per s)")
    print(f"({stages}; the rest: reports)")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _open_ledger(path: str) -> Ledger:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no ledger at {path} (has the loop run? see --ledger)")
    return Ledger(path)


def _ledger_arms(ledger: Ledger) -> tuple[list[str], list[str]]:
    frame = ledger.decisions_frame()
    return sorted(set(frame["arm"])), sorted(set(frame["market"]))


def cmd_status(args: argparse.Namespace) -> int:
    config = load_trading_config(args.trading_config)
    with _open_ledger(args.ledger) as ledger:
        arms, markets = _ledger_arms(ledger)
        report = summary(ledger, arms, markets, config.paper.initial_krw,
                         config.loop.rolling_window_hours)  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    for arm, a in report["arms"].items():
        print(f"{arm:>6}: equity {a['equity']:,.0f} KRW  return {100 * a['return']:+.2f} %  "
              f"drawdown {100 * a['drawdown']:.2f} %  hours {a['hours']}")  # fmt: skip
    for market, score in report["accuracy"].items():
        acc, bal = score["accuracy"], score["balanced_accuracy"]
        shown = "n/a" if acc is None else f"{100 * acc:.1f} % (balanced {100 * bal:.1f} %)"
        print(f"{market}: realised accuracy {shown} over {score['n']} scored decisions")
    return 0


def cmd_ab_report(args: argparse.Namespace) -> int:
    config = load_trading_config(args.trading_config)
    with _open_ledger(args.ledger) as ledger:
        arms, markets = _ledger_arms(ledger)
        initial = config.paper.initial_krw * len(markets)
        print(format_report(ab_report(ledger, arms, initial)))
        paths = write_ab_report(ledger, arms, initial, Path(args.out))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from trading.replay import format_differences, replay_ledger  # loads torch: only here

    config = load_trading_config(args.trading_config)
    with _open_ledger(args.ledger) as ledger:
        differences, compared = replay_ledger(
            ledger, ParquetDirSource(args.data_dir), ModelRegistry(args.registry), config
        )
    print(format_differences(differences, compared))
    return 1 if differences else 0


def cmd_switch(args: argparse.Namespace) -> int:
    import ray

    from trading.loop import get_loop

    ray.init(address=args.address, ignore_reinit_error=True, log_to_driver=False)
    result = ray.get(get_loop().set_trading.remote(args.on, args.by, args.reason), timeout=60)
    print(f"trading {'on' if result['trading_enabled'] else 'off'} (by {result['by']})")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """List what halts trading (exit 1 while anything does), or acknowledge it with --ack."""
    with _open_ledger(args.ledger) as ledger:
        if args.ack:
            if not (args.by or "").strip():
                raise ValueError("--ack needs --by NAME: the ledger records who checked")
            acked = ledger.halts.acknowledge(args.by, args.market)
            for halt in acked:
                print(f"acknowledged by {args.by}: {halt.market}: {halt.reason}")
            print(f"{len(acked)} halt(s) acknowledged; the loop trades those markets next hour")
            return 0
        halts = ledger.halts.open()
        unknown = [o for o in ledger.pending_orders() if o.status.value == "unknown"]
    for market, reasons in sorted(halts.items()):
        for halt in reasons:
            print(f"HALTED {market} since {halt.raised_at:%Y-%m-%d %H:%M:%S}: {halt.reason}")
    for order in unknown:
        print(f"unknown outcome: {order.identifier} ({order.arm}): {order.error}")
    if not halts and not unknown:
        print("nothing halted: the ledger and the exchange agreed at the loop's last start")
        return 0
    print("check these orders and balances on the exchange, then: "
          "python -m trading reconcile --ack --by NAME")  # fmt: skip
    return 1


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "reconcile": cmd_reconcile,
    "backtest": cmd_backtest,
    "status": cmd_status,
    "ab-report": cmd_ab_report,
    "replay": cmd_replay,
    "switch": cmd_switch,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, RegistryError, LookupError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
