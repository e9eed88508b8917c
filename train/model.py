"""The network: a plain PyTorch LSTM encoder with a classification head, nothing over it.

The encoder reads a transformed (batch, 24, F) window (F: the transform's width, the 46 plus any
feature groups and their missing flags); its last hidden state is the summary the LightGBM head
consumes. The linear head exists to train the encoder (class-weighted cross-entropy) and as a
fallback probe; the bundle's probabilities come from LightGBM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderSpec:
    n_features: int = 46
    hidden_size: int = 128
    num_layers: int = 2
    dropout: float = 0.2
    n_classes: int = 3

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class LSTMEncoder(nn.Module):
    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.lstm = nn.LSTM(
            input_size=spec.n_features,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden_size, spec.n_classes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Last layer's hidden state after the final hour: (batch, hidden_size)."""
        _, (h_n, _) = self.lstm(x)
        return h_n[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (batch, n_classes)."""
        return self.head(self.dropout(self.encode(x)))
