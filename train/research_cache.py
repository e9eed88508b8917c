"""The research cache: each fold's out-of-sample probabilities as one Parquet file.

Layout under the root (a local path or any pyarrow.fs URI)::

    <root>/<market>/<family>/<config hash>/f<fold>_<test start>_<test end>_<fingerprint>.parquet

A file holds the fold's predicted hours (index `time`) with `fold`, `p_sell`, `p_hold`, `p_buy`,
`label_threshold` (the threshold the fold's model labelled its training rows with: a quantile
label's is fitted per fold, and the margin prices that fold's calls with it; files written before
it existed lack it and are read as they are), and in its schema metadata when and where it was
computed. Labels are not stored: a report labels the hours itself, so the same predictions can be
scored against any label. A key changes when anything that changes the predictions changes (the
family's configuration, the candles the fold read, its market's and the other series its feature
groups read, the fold's span), so a hit can be trusted and a second run recomputes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from features.candles import CANDLE_COLUMNS
from features.exchange import check_market
from features.groups import KST_OFFSET_NS, MarketContext

PROBA = ["p_sell", "p_hold", "p_buy"]
THRESHOLD = "label_threshold"
_INFO_KEY = b"hybrid_trader.research"


def config_hash(description: dict[str, Any]) -> str:
    """12 hex digits of sha256 over the sorted JSON of everything that changes predictions."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def candle_fingerprints(candles: pd.DataFrame, bounds: list[pd.Timestamp]) -> dict[str, str]:
    """For each bound, a fingerprint of every candle that opens before it (times and values).

    One chained pass: candles are hashed in order and the digest is read off at each bound, so
    many folds cost one read of the market's history.
    """
    index = candles.index.asi8
    values = np.ascontiguousarray(candles[list(CANDLE_COLUMNS)].to_numpy(dtype="float64"))
    digest = hashlib.blake2b(digest_size=8)
    out: dict[str, str] = {}
    done = 0
    for bound in sorted(set(bounds)):
        stop = int(np.searchsorted(index, bound.value, side="left"))
        digest.update(index[done:stop].tobytes())
        digest.update(values[done:stop].tobytes())
        done = max(done, stop)
        out[str(bound)] = digest.copy().hexdigest()
    return out


def with_pooled(own: dict[str, str], pooled: dict[str, dict[str, str]]) -> dict[str, str]:
    """`own` fingerprints (per bound) that also cover the pooled markets' inputs before each
    bound (`pooled`: market -> its `input_fingerprints` at the same bounds); `own` unchanged
    without any, so an unpooled fold keeps its key."""
    if not pooled:
        return own
    out = {}
    for bound, fingerprint in own.items():
        digest = hashlib.blake2b(fingerprint.encode(), digest_size=8)
        for market in sorted(pooled):
            digest.update(f"|pool:{market}={pooled[market][bound]}".encode())
        out[bound] = digest.hexdigest()
    return out


def input_fingerprints(
    candles: pd.DataFrame, context: MarketContext | None, bounds: list[pd.Timestamp]
) -> dict[str, str]:
    """For each bound, a fingerprint of every series a fold's rows read before it.

    That is the market's own candles and, where a feature group reads them, the series its
    `MarketContext` holds: the context markets' Upbit candles (cross_market) and the coin's
    Binance candles (premium), the latter placed on the KST clock by instant, as
    features.groups matches them, so "before the bound" means the same hour for every series.
    The context holds only what the enabled groups read (features.context.batch_context), so a
    change to a file no enabled group reads changes no key; with no context at all this is
    `candle_fingerprints` of the market alone, the keys research used before groups existed.
    Context is covered up to the same bound as the market's own candles (test end + horizon),
    a few hours more than its features read: a change there costs a recompute, never a stale hit.
    """
    own = candle_fingerprints(candles, bounds)
    if context is None:
        return own
    series = {f"upbit:{m}": frame for m, frame in context.upbit.items()}
    if context.binance is not None:
        on_kst = context.binance.index + pd.Timedelta(KST_OFFSET_NS, unit="ns")
        series["binance"] = context.binance.set_axis(on_kst, axis=0)
    parts = {name: candle_fingerprints(frame, bounds) for name, frame in sorted(series.items())}
    out = {}
    for bound, fingerprint in own.items():
        digest = hashlib.blake2b(fingerprint.encode(), digest_size=8)
        for name, prints in parts.items():
            digest.update(f"|{name}={prints[bound]}".encode())
        out[bound] = digest.hexdigest()
    return out


@dataclass(frozen=True)
class FoldKey:
    """Everything that identifies one fold's predictions."""

    market: str
    family: str
    config: str  # config_hash
    fold: int  # the grid's fold number (walk-forward) or the part (leaky K-fold)
    start: pd.Timestamp
    end: pd.Timestamp
    fingerprint: str

    def relative_path(self) -> str:
        check_market(self.market)
        name = f"f{self.fold:+05d}_{self.start:%Y%m%dT%H}_{self.end:%Y%m%dT%H}_{self.fingerprint}"
        return f"{self.market}/{self.family}/{self.config}/{name}.parquet"


class PredictionCache:
    """Read and write fold predictions under one root; safe for concurrent writers.

    Local files are written under a temporary name and renamed, so a reader never sees half a file;
    object stores make a put visible whole.
    """

    def __init__(self, root: str | Path) -> None:
        text = str(root)
        if "://" in text:
            self._fs, self._base = pafs.FileSystem.from_uri(text)
        else:
            self._fs, self._base = pafs.LocalFileSystem(), str(Path(text).resolve())
        self.root = text
        self._local = isinstance(self._fs, pafs.LocalFileSystem)

    def _path(self, key: FoldKey) -> str:
        return f"{self._base.rstrip('/')}/{key.relative_path()}"

    def has(self, key: FoldKey) -> bool:
        return self._fs.get_file_info(self._path(key)).type == pafs.FileType.File

    def read(self, key: FoldKey) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """The fold's frame and its run info, or None when it was never computed."""
        if not self.has(key):
            return None
        with self._fs.open_input_file(self._path(key)) as handle:
            table = pq.read_table(handle)
        info = json.loads((table.schema.metadata or {}).get(_INFO_KEY, b"{}"))
        return table.to_pandas(), info

    def write(self, key: FoldKey, frame: pd.DataFrame, info: dict[str, Any]) -> None:
        missing = {"fold", *PROBA} - set(frame.columns)
        if missing or frame.index.name != "time":
            raise ValueError(f"{key.relative_path()}: a fold frame needs index 'time' and {PROBA}")
        columns = ["fold", *PROBA, *([THRESHOLD] if THRESHOLD in frame else [])]
        table = pa.Table.from_pandas(frame[columns], preserve_index=True)
        meta = dict(table.schema.metadata or {})
        meta[_INFO_KEY] = json.dumps(info, default=str).encode()
        table = table.replace_schema_metadata(meta)
        path = self._path(key)
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if not self._local:
            with self._fs.open_output_stream(path) as out:
                pq.write_table(table, out)
            return
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        temporary = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as out:
            out.write(buffer.getvalue())
        os.replace(temporary, path)

    def configs(self, market: str) -> list[tuple[str, str]]:
        """(family, config hash) of every configuration with predictions for `market`."""
        base = f"{self._base.rstrip('/')}/{check_market(market)}"
        if self._fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        selector = pafs.FileSelector(base, recursive=True)
        found = set()
        for info in self._fs.get_file_info(selector):
            parts = info.path[len(base) :].strip("/").split("/")
            if (
                info.type == pafs.FileType.File
                and len(parts) == 3
                and parts[2].endswith(".parquet")
            ):
                found.add((parts[0], parts[1]))
        return sorted(found)

    def spans(
        self, market: str, family: str, config: str
    ) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
        """Test spans stored for one configuration (from the file names)."""
        base = f"{self._base.rstrip('/')}/{check_market(market)}/{family}/{config}"
        selector = pafs.FileSelector(base, allow_not_found=True)
        spans = []
        for info in self._fs.get_file_info(selector):
            name = info.base_name
            if name.endswith(".parquet"):
                _, start, end, _ = name.removesuffix(".parquet").split("_")
                spans.append((pd.Timestamp(start), pd.Timestamp(end)))
        return spans

    def keys(self, market: str, family: str, config: str) -> list[FoldKey]:
        """Every stored fold of one configuration, as keys (from the file names), by fold."""
        base = f"{self._base.rstrip('/')}/{check_market(market)}/{family}/{config}"
        found = []
        for info in self._fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
            if info.base_name.endswith(".parquet"):
                fold, start, end, fingerprint = info.base_name.removesuffix(".parquet").split("_")
                found.append(
                    FoldKey(
                        market,
                        family,
                        config,
                        int(fold[1:]),
                        pd.Timestamp(start),
                        pd.Timestamp(end),
                        fingerprint,
                    )  # fmt: skip
                )
        return sorted(found, key=lambda k: k.fold)
