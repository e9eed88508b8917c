"""`python -m train ablate`: what each feature group adds, walk-forward, with intervals.

    python -m train ablate --markets KRW-BTC,KRW-XRP --data-dir DIR --start T --end T
        [--family gbm|hybrid|ensemble] [--groups multi_horizon,calendar] [--profile quick]
        [--local | --ray-address local] [--json] [--out DIR] [--cache DIR] [--cached-only]

For the base 46 alone and the base plus each group in turn, it runs the research walk-forward of
one family (`--family`, gbm by default; train.research_run: the same folds, the same cache, so a
variant computed once is read back next time) and scores every variant against the base on the
hours both predicted, with the configured training label. The family matters: the hybrid reads
the groups through its own input transform (features/transform.py: median fill, missing flags),
so a group can help one family and not another; the ensemble blends the two, both with the
variant's groups. One family per run (a comparison across families is research's job). The
effect of a group is the difference in balanced accuracy (variant minus base) per market, with a
95 % moving-block bootstrap interval whose resamples are shared by the two models (paired), and
its mean over the markets (each market's resamples drawn independently).

A group *helps* when the mean difference's interval lies above zero, *hurts* when it lies below,
otherwise its effect is unclear. Choose the default groups (configs/features.yaml `groups:`) on
hours before the reported folds (`--end` before the research start), never on the reported ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.candles import repair_segments
from features.config import ConfigError
from features.groups import GROUP_ORDER
from features.sources import ParquetDirSource
from train.config import FAMILIES
from train.research_cache import config_hash
from train.research_cli import add_research_parser, build_request
from train.research_jobs import MarketIndex, prepare_market
from train.research_keys import current_keys, describe
from train.research_run import (
    MarketResearch,
    ResearchRequest,
    run_research,
    training_labels,
)
from train.research_stats import block_starts, bootstrap_metrics, interval, point_metrics

DEFAULT_FAMILY = "gbm"
METRIC = "balanced_accuracy"


def add_ablate_parser(sub: argparse._SubParsersAction) -> None:
    """The research command's options, plus the groups to measure."""
    research = argparse.ArgumentParser(add_help=False)
    inner = research.add_subparsers()
    add_research_parser(inner)
    template = inner.choices["research"]
    p = sub.add_parser("ablate", help="each feature group's effect, walk-forward, with intervals")
    for action in template._actions:
        if action.dest in {"help", "family", "no_leaky"}:
            continue
        p._add_action(action)
    p.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        help=f"the one family whose groups to measure: {', '.join(FAMILIES)} "
        f"(default {DEFAULT_FAMILY})",
    )
    p.add_argument("--groups", help=f"comma-separated of {', '.join(GROUP_ORDER)} (default all)")
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="compare the variants' folds already in the cache (from earlier, partial runs)",
    )


def variants(groups: list[str]) -> dict[str, tuple[str, ...]]:
    """Variant name -> enabled groups: the base, and the base plus each group alone (each group
    is judged on its own against the same base; a combination is one more `--groups` run of
    research with those groups on)."""
    return {"base": ()} | {f"+{g}": (g,) for g in groups}


def with_groups(req: ResearchRequest, enabled: tuple[str, ...], family: str) -> ResearchRequest:
    """The request for one variant: `family` only, no leaky twin, no baselines, these groups."""
    switches = {g: g in enabled for g in GROUP_ORDER}
    groups = req.features.groups.model_copy(update=switches)
    features = req.features.model_copy(update={"groups": groups})
    return dataclasses.replace(req, features=features, families=[family], leaky=False,
                               baselines=False)  # fmt: skip


def _in_range(frame: pd.DataFrame, req: ResearchRequest) -> pd.DatetimeIndex:
    hours = frame.index
    if req.start is not None:
        hours = hours[hours >= req.start]
    if req.end is not None:
        hours = hours[hours <= req.end]
    return hours


def compare(
    base: MarketResearch, other: MarketResearch, req: ResearchRequest, family: str
) -> tuple[dict[str, Any], np.ndarray]:
    """Balanced accuracy of `family`'s predictions in both on their common labelled hours, and
    the paired difference's bootstrap resamples (returned too, for the mean over markets)."""
    labels = training_labels(base.index, req.features)
    a, b = base.predictions[family], other.predictions[family]
    hours = _in_range(a, req).intersection(b.index)
    hours = hours[np.isfinite(labels.reindex(hours).to_numpy())]
    y = labels.reindex(hours).to_numpy().astype(np.int64)
    pa, pb = (f.loc[hours, ["p_sell", "p_hold", "p_buy"]].to_numpy() for f in (a, b))
    boot = req.research.bootstrap
    starts, block = block_starts(len(y), boot.block_hours, boot.samples, boot.seed)
    diff = (
        bootstrap_metrics(y, pb, starts, block)[METRIC]
        - bootstrap_metrics(y, pa, starts, block)[METRIC]
    )
    base_ba, other_ba = point_metrics(y, pa)[METRIC], point_metrics(y, pb)[METRIC]
    row = {
        "hours": int(len(y)),
        "first": str(hours[0]) if len(hours) else None,
        "last": str(hours[-1]) if len(hours) else None,
        "base": base_ba,
        "variant": other_ba,
        "diff": other_ba - base_ba,
        "interval": interval(diff),
    }
    return row, diff


def verdict(low: float, high: float) -> str:
    return "helps" if low > 0 else "hurts" if high < 0 else "unclear"


def cached_research(req: ResearchRequest, family: str) -> dict[str, MarketResearch]:
    """A variant's `family` predictions read straight from the research cache (every fold in range,
    whichever run computed it from the data now in the folder), with the market's repaired
    timeline for the labels: the table of several partial `ablate` runs, without fitting
    anything (the market's dataset is built only for its fold fingerprints)."""
    digest = config_hash(describe(family, req))
    out = {}
    for market in req.markets:
        candles = ParquetDirSource(req.data_dir).history(market)
        parts = repair_segments(candles, req.features.max_gap_hours)
        times = pd.DatetimeIndex(np.concatenate([p.candles.index.asi8 for p in parts]))
        close = np.concatenate([p.candles["close"].to_numpy() for p in parts])
        index = MarketIndex(market, times, close, np.arange(len(times)), {})
        frames = []
        _, prepared = prepare_market(req.data_dir, market, req.features, req.grid, set())
        stored = req.cache.keys(market, family, digest)
        for key in current_keys(stored, prepared, req.features.labels.horizon_hours):
            if (req.end is None or key.start <= req.end) and (
                req.start is None or key.end > req.start
            ):
                frames.append(req.cache.read(key)[0])
        if not frames:
            raise ValueError(
                f"{market}: no cached {family} folds for groups "
                f"{list(req.features.feature_set().groups)} (config {digest})"
            )
        frame = pd.concat(frames).sort_index()
        out[market] = MarketResearch(index, [], {family: frame})
    return out


def ablate(
    req: ResearchRequest,
    groups: list[str],
    family: str,
    say: Any,
    local: bool,
    cached: bool = False,
) -> dict[str, Any]:
    """Run every variant of `family` (or, `cached`, read it back) and compare each with the base,
    per market and on average."""
    runs = {
        name: cached_research(with_groups(req, enabled, family), family)
        if cached
        else run_research(with_groups(req, enabled, family), say, local=local)[0]
        for name, enabled in variants(groups).items()
    }
    report: dict[str, Any] = {"metric": METRIC, "family": family, "variants": {}}
    for name, enabled in variants(groups).items():
        if name == "base":
            continue
        rows, resamples = {}, []
        for market in req.markets:
            rows[market], diff = compare(runs["base"][market], runs[name][market], req, family)
            resamples.append(diff)
        mean = np.mean(resamples, axis=0)
        point = float(np.mean([r["diff"] for r in rows.values()]))
        low, high = interval(mean)
        report["variants"][name] = {
            "groups": list(enabled),
            "markets": rows,
            "mean": {"diff": point, "interval": [low, high], "verdict": verdict(low, high)},
        }
    report["helps"] = [
        g for g in groups if report["variants"][f"+{g}"]["mean"]["verdict"] == "helps"
    ]
    return report


def format_ablation(report: dict[str, Any], markets: list[str]) -> str:
    """One line per variant: each market's difference [interval], and the mean with a verdict."""
    head = f"{'variant':<16}" + "".join(f"{m:>26}" for m in markets) + f"{'mean':>26}  verdict"
    title = f"balanced accuracy, variant minus base ({report['family']}), 95 % block-bootstrap"
    lines = [f"{title} interval", head]
    for name, v in report["variants"].items():
        cells = [v["markets"][m] for m in markets] + [v["mean"]]
        text = "".join(
            f"{c['diff']:>+9.4f} [{c['interval'][0]:+.3f},{c['interval'][1]:+.3f}]" for c in cells
        )
        lines.append(f"{name:<16}{text}  {v['mean']['verdict']}")
    first = report["variants"][next(iter(report["variants"]))]["markets"]
    for m in markets:
        r = first[m]
        span = f"{r['hours']} hours {r['first']} .. {r['last']}"
        lines.append(f"{m}: {span}, base balanced accuracy {r['base']:.4f}")
    lines.append(f"groups that help: {', '.join(report['helps']) or 'none'}")
    return "\n".join(lines)


def _groups(text: str | None) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()] if text else list(GROUP_ORDER)
    unknown = [g for g in groups if g not in GROUP_ORDER]
    if unknown or not groups:
        raise ConfigError(
            f"unknown group {unknown or text!r}: choose from {', '.join(GROUP_ORDER)}"
        )
    return groups


def _family(text: str) -> str:
    """The one family to ablate: each variant is that family's research run."""
    family = text.strip()
    if "," in family:
        raise ConfigError(
            f"--family {text!r}: ablate measures one family per run; run it once for each"
        )
    if family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    return family


def cmd_ablate(args: argparse.Namespace) -> int:
    from train.research_cli import init_ray

    family, groups = _family(args.family), _groups(args.groups)
    args.family, args.no_leaky = family, True
    req = build_request(args)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    if not (args.local or args.cached_only):
        init_ray(args)
    report = ablate(req, groups, family, say, args.local, cached=args.cached_only)
    report["command"] = "python -m train " + " ".join(sys.argv[1:])
    text = format_ablation(report, req.markets)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "ablation.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "ablation.txt").write_text(text + "\n")
    print(json.dumps(report, indent=1, default=str) if args.json else text)
    return 0
