"""Small models and inputs for tests and examples (no downloads, seeded)."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """Conv, depthwise conv, pointwise conv and two linears: every engine layer kind."""

    def __init__(self, channels: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pw = nn.Conv2d(channels, 2 * channels, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(2 * channels * 16, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.pw(x))
        x = self.pool(x).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


class TinyMLP(nn.Module):
    """Three linears; `shared` runs twice per forward (for call counting)."""

    def __init__(self, width: int = 64, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.inp = nn.Linear(width, hidden)
        self.shared = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        h = torch.relu(self.shared(h))
        h = torch.relu(self.shared(h))
        return self.out(h)


def gaussian(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
