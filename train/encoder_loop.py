"""The encoder's training loop, the same in a plain process and inside a Ray Train worker.

Everything that differs between the two runtimes (device, DDP wrapping, distributed sampling,
reporting) goes through `TrainHooks`, so Ray Train runs this very loop, not a copy of it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from train.config import OptimConfig
from train.model import EncoderSpec, LSTMEncoder


@dataclass
class TrainHooks:
    """The runtime seam: defaults run in-process on the CPU (or the given device)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[nn.Module], nn.Module] | None = None
    prepare_loader: Callable[[DataLoader], DataLoader] | None = None
    report: Callable[[dict[str, float]], None] | None = None

    def model(self, model: nn.Module) -> nn.Module:
        return self.prepare_model(model) if self.prepare_model else model.to(self.device)

    def loader(self, loader: DataLoader) -> DataLoader:
        return self.prepare_loader(loader) if self.prepare_loader else loader

    def emit(self, metrics: dict[str, float]) -> None:
        if self.report:
            self.report(metrics)


@dataclass(frozen=True)
class EncoderResult:
    model: LSTMEncoder  # unwrapped, on the CPU, best epoch's weights
    history: list[dict[str, float]]
    best_epoch: int
    sequences_per_second: float


def class_weights(y: np.ndarray, n_classes: int = 3) -> torch.Tensor:
    """Inverse-frequency weights, so a HOLD-heavy window does not teach 'always HOLD'."""
    counts = np.bincount(y, minlength=n_classes).astype("float64")
    weights = len(y) / (n_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def _unwrap(model: nn.Module) -> LSTMEncoder:
    inner = getattr(model, "module", model)
    assert isinstance(inner, LSTMEncoder)
    return inner


@torch.no_grad()
def stop_loss(model: LSTMEncoder, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """Unweighted log loss of the linear head on the early-stopping slice."""
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, len(x), batch):
        xb = torch.from_numpy(x[start : start + batch]).to(device)
        yb = torch.from_numpy(y[start : start + batch]).to(device)
        total += float(nn.functional.cross_entropy(model(xb), yb, reduction="sum"))
    return total / max(len(x), 1)


def _epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, opt, device) -> int:
    model.train()
    seen = 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += len(xb)
    return seen


def train_encoder(
    spec: EncoderSpec,
    optim: OptimConfig,
    fit: tuple[np.ndarray, np.ndarray],
    stop: tuple[np.ndarray, np.ndarray],
    hooks: TrainHooks | None = None,
) -> EncoderResult:
    """Fit on `fit`, keep the epoch with the lowest log loss on `stop`, stop after `patience`."""
    hooks = hooks or TrainHooks()
    torch.manual_seed(optim.seed)
    x_fit, y_fit = fit
    dataset = TensorDataset(torch.from_numpy(x_fit), torch.from_numpy(y_fit))
    generator = torch.Generator().manual_seed(optim.seed)
    loader = hooks.loader(
        DataLoader(dataset, batch_size=optim.batch_size, shuffle=True, generator=generator)
    )
    model = hooks.model(LSTMEncoder(spec))
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y_fit).to(hooks.device))
    best, best_epoch, best_state, history = math.inf, 0, None, []
    seen, busy = 0, 0.0
    for epoch in range(1, optim.epochs + 1):
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        started = time.perf_counter()
        seen += _epoch(model, loader, loss_fn, opt, hooks.device)
        busy += time.perf_counter() - started
        val = stop_loss(_unwrap(model), stop[0], stop[1], optim.batch_size * 4)
        history.append({"epoch": float(epoch), "val_loss": val})
        hooks.emit({"epoch": float(epoch), "val_loss": val})
        if val < best - 1e-6:
            best, best_epoch = val, epoch
            best_state = copy.deepcopy(_unwrap(model).state_dict())
        elif epoch - best_epoch >= optim.patience:
            break
    encoder = _unwrap(model)
    if best_state is not None:
        encoder.load_state_dict(best_state)
    encoder = encoder.to("cpu").eval()
    return EncoderResult(encoder, history, best_epoch, seen / busy if busy > 0 else 0.0)


@torch.no_grad()
def encode(model: LSTMEncoder, x: np.ndarray, batch: int = 2048) -> np.ndarray:
    """Encoder outputs (n, hidden) for transformed windows, in batches, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    parts = [
        model.encode(torch.from_numpy(x[start : start + batch]).to(device)).cpu().numpy()
        for start in range(0, len(x), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, model.spec.hidden_size), np.float32)
