"""Embeddings of token indices, diffusion time and class labels (DiT, Peebles & Xie 2023)."""

from __future__ import annotations

import math

import torch
from torch import nn


def index_embedding(indices: torch.Tensor, dim: int, max_len: int = 2048) -> torch.Tensor:
    """Sine/cosine embedding of integer token positions: (...,) -> (..., dim)."""
    k = torch.arange(dim // 2, device=indices.device)
    angle = indices[..., None].float() * math.pi / (max_len ** (2 * k / dim))
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Scalar time t in [0, 1] -> frequency features -> MLP -> (B, d)."""

    def __init__(self, d_model: int, frequency_dim: int = 256, max_period: float = 10_000.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def frequencies(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, frequency_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.frequencies(t))


class LabelEmbedder(nn.Module):
    """Class label -> (B, d). Label 0 is the null class; dropping labels to 0 trains CFG."""

    def __init__(self, num_classes: int, d_model: int, dropout_prob: float):
        super().__init__()
        self.table = nn.Embedding(num_classes + 1, d_model)  # +1: the null class 0
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.zeros_like(labels), labels)
        return self.table(labels)
