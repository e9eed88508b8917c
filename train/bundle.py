"""The hybrid model and its bundle on disk: lstm.pt, lightgbm.txt, transform.json, metadata.json;
and `load_bundle`, the one loader of every family's bundle.

No pickle anywhere: the encoder is a state dict loaded with `weights_only=True`, the head is
LightGBM's text format, the transform and metadata are JSON. Loading checks the feature hash and
every shape, so a bundle made for other features or a corrupt file is refused with a reason.
`load_bundle` reads `family` from metadata.json (hybrid when absent: bundles made before families)
and returns the family's model; every one answers `predict_proba(raw windows (n, 24, F))` (F: the
bundle's feature set), `metadata` and `version`, so Serve, the backtester, `evaluate` and `replay`
serve any family.
"""

from __future__ import annotations

import json
import pickle  # only for its exception type: loading stays weights_only
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import torch

from features.transform import SequenceTransform, TransformError
from train.bundle_io import (
    BundleError,
    bundle_family,
    bundle_feature_set,
    feature_metadata,
    read_metadata,
    require_files,
)
from train.encoder_loop import encode
from train.ensemble import load_ensemble
from train.gbm import load_gbm
from train.head import calibrated_proba, head_inputs, raw_scores
from train.model import EncoderSpec, LSTMEncoder
from train.novelty import Novelty, load_novelty, save_novelty

__all__ = ["BUNDLE_FILES", "BundleError", "HybridModel", "ServableModel", "load_bundle"]

BUNDLE_FILES = ("lstm.pt", "lightgbm.txt", "transform.json", "metadata.json")


class ServableModel(Protocol):
    """What every family's model offers its callers (Serve, backtest, evaluate, replay)."""

    metadata: dict[str, Any]
    novelty: Novelty | None  # the gate's reference (train.novelty); None in older bundles

    @property
    def version(self) -> str: ...

    def predict_proba(self, windows: np.ndarray) -> np.ndarray: ...

    def save(self, directory: Path) -> Path: ...


@dataclass
class HybridModel:
    encoder: LSTMEncoder
    head: lgb.Booster
    transform: SequenceTransform
    temperature: float
    use_last_row: bool
    metadata: dict[str, Any]
    novelty: Novelty | None = None

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "unregistered"))

    def predict_proba(self, windows: np.ndarray) -> np.ndarray:
        """(n, 24, F) raw feature windows -> (n, 3) calibrated SELL/HOLD/BUY probabilities.

        Raw windows in, so no caller can forget or mis-apply the transform. The hybrid reads its
        transform's columns, the first of the window's (the bundle's feature set): all of them,
        or the base 46 alone for a bundle whose transform predates groups in the hybrid.
        """
        width = len(self.transform.feature_names)
        raw = np.asarray(windows, dtype="float64")[..., :width]
        x = self.transform.apply_windows(raw)
        return self.predict_proba_transformed(x)

    def predict_proba_transformed(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, 3))
        inputs = head_inputs(encode(self.encoder, x), x[:, -1, :] if self.use_last_row else None)
        return calibrated_proba(raw_scores(self.head, inputs), self.temperature)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.encoder.state_dict(), directory / "lstm.pt")
        self.head.save_model(str(directory / "lightgbm.txt"))
        (directory / "transform.json").write_text(self.transform.to_json())
        save_novelty(self.novelty, directory)
        meta = {
            **self.metadata,
            "family": "hybrid",
            **feature_metadata(bundle_feature_set(self.metadata)),  # what serving computes
            "encoder": self.encoder.spec.to_dict(),
            "temperature": self.temperature,
            "use_last_row": self.use_last_row,
        }
        (directory / "metadata.json").write_text(json.dumps(meta, indent=1, default=str))
        return directory


def _load_encoder(directory: Path, meta: dict[str, Any], width: int) -> LSTMEncoder:
    try:
        spec = EncoderSpec(**meta["encoder"])
    except (KeyError, TypeError) as exc:
        raise BundleError(
            f"{directory / 'metadata.json'} has no valid 'encoder' spec: {exc}"
        ) from exc
    if spec.n_features != width:
        raise BundleError(
            f"bundle encoder reads {spec.n_features} inputs, its transform.json gives {width}"
        )
    encoder = LSTMEncoder(spec)
    try:
        state = torch.load(directory / "lstm.pt", map_location="cpu", weights_only=True)
        encoder.load_state_dict(state)
    except (
        RuntimeError,
        EOFError,
        ValueError,
        KeyError,
        AttributeError,
        pickle.UnpicklingError,
    ) as exc:
        raise BundleError(
            f"{directory / 'lstm.pt'} is corrupt or does not fit {spec}: {exc}"
        ) from exc
    return encoder.eval()


def _load_head(directory: Path, expected_inputs: int) -> lgb.Booster:
    try:
        head = lgb.Booster(model_file=str(directory / "lightgbm.txt"))
    except lgb.basic.LightGBMError as exc:
        raise BundleError(f"{directory / 'lightgbm.txt'} is not a LightGBM model: {exc}") from exc
    if head.num_feature() != expected_inputs:
        raise BundleError(
            f"{directory / 'lightgbm.txt'} reads {head.num_feature()} inputs, "
            f"the encoder gives {expected_inputs}"
        )
    return head


def load_bundle(directory: Path | str) -> ServableModel:
    """The model of any family's bundle directory, refused with a reason when it cannot serve."""
    directory = Path(directory)
    meta = read_metadata(directory)
    family = bundle_family(meta)
    if family == "gbm":
        return load_gbm(directory, meta)
    if family == "ensemble":
        return load_ensemble(directory, meta, load_bundle)
    if family != "hybrid":
        raise BundleError(f"{directory / 'metadata.json'}: unknown model family {family!r}")
    return load_hybrid(directory, meta)


def load_hybrid(directory: Path, meta: dict[str, Any]) -> HybridModel:
    require_files(directory, BUNDLE_FILES)
    try:
        transform = SequenceTransform.from_json((directory / "transform.json").read_text())
    except (TransformError, UnicodeDecodeError) as exc:
        raise BundleError(f"{directory / 'transform.json'}: {exc}") from exc
    served = bundle_feature_set(meta, directory).names
    if served[: len(transform.feature_names)] != transform.feature_names:
        raise BundleError(
            f"{directory / 'transform.json'} reads groups {list(transform.feature_set.groups)}, "
            f"which are not the first columns of the bundle's feature set {served}"
        )
    encoder = _load_encoder(directory, meta, transform.width)
    use_last_row = bool(meta.get("use_last_row", True))
    inputs = encoder.spec.hidden_size + (transform.width if use_last_row else 0)
    head = _load_head(directory, inputs)
    temperature = float(meta.get("temperature", 1.0))
    if not np.isfinite(temperature) or temperature <= 0:
        raise BundleError(
            f"{directory / 'metadata.json'}: temperature {temperature} is not positive"
        )
    novelty = load_novelty(directory)
    return HybridModel(encoder, head, transform, temperature, use_last_row, meta, novelty)
