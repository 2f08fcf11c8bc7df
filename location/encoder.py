"""GeoCLIP-style location encoder: (latitude, longitude) -> a unit vector in a shared embedding space.

Why this shape (Vivanco Cepeda et al., GeoCLIP 2023; reused by TaxaBind): coordinates
are first projected with Equal Earth, an equal-area projection, so a unit of the input
is the same ground area everywhere and the poles are not over-weighted; random Fourier
features at several scales (sigma 1, 16, 256) let one branch learn continents and another
a few tens of kilometres; each scale has its own small MLP and the branch outputs are
summed, then projected into the target space (image or taxon vectors) and normalised.

The default size (`DEFAULT_CONFIG`) trains on 100k records in minutes on a CPU; the
GeoCLIP paper's size is the `geoclip` preset in `PRESETS`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from retrieval.errors import BadInput

# Equal Earth (Šavrič, Patterson & Jenny 2018) polynomial coefficients.
_A1, _A2, _A3, _A4 = 1.340264, -0.081106, 0.000893, 0.003796
_SF = 66.50336  # GeoCLIP's scale: x in [-1, 1], y in about [-0.49, 0.49]

PRESETS: dict[str, dict[str, Any]] = {
    "small": {"sigmas": (1.0, 16.0, 256.0), "fourier_features": 128, "hidden": 256, "layers": 2},
    "geoclip": {"sigmas": (1.0, 16.0, 256.0), "fourier_features": 256, "hidden": 1024, "layers": 3},
    "tiny-test": {"sigmas": (1.0, 16.0, 256.0), "fourier_features": 16, "hidden": 32, "layers": 1},
}
DEFAULT_PRESET = "small"


def equal_earth(lat: torch.Tensor, lon: torch.Tensor) -> torch.Tensor:
    """(n, 2) projected (x, y) for degrees of latitude and longitude, scaled as GeoCLIP does."""
    theta = torch.asin(math.sqrt(3.0) / 2 * torch.sin(torch.deg2rad(lat)))
    t2 = theta * theta
    t6 = t2 * t2 * t2
    denominator = 3 * (9 * _A4 * t6 * t2 + 7 * _A3 * t6 + 3 * _A2 * t2 + _A1)
    x = 2 * math.sqrt(3.0) * torch.deg2rad(lon) * torch.cos(theta) / denominator
    y = theta * (_A1 + _A2 * t2 + t6 * (_A3 + _A4 * t2))
    return torch.stack((x, y), dim=-1) * _SF / 180.0


class FourierBranch(nn.Module):
    """Random Fourier features at one scale (fixed Gaussian frequencies) and the MLP that reads them."""

    def __init__(self, sigma: float, features: int, hidden: int, layers: int, out_dim: int, generator: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.randn(features // 2, 2, generator=generator) * sigma)
        blocks: list[nn.Module] = [nn.Linear(features, hidden), nn.ReLU()]
        for _ in range(layers - 1):
            blocks += [nn.Linear(hidden, hidden), nn.ReLU()]
        blocks.append(nn.Linear(hidden, out_dim))
        self.mlp = nn.Sequential(*blocks)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * xy @ self.frequencies.T
        return self.mlp(torch.cat((torch.cos(angles), torch.sin(angles)), dim=-1))


class LocationEncoder(nn.Module):
    """Summed multi-scale branches -> L2-normalised `dim`-vector, plus a learned logit scale (CLIP's temperature)."""

    def __init__(self, dim: int, *, sigmas: tuple[float, ...] = (1.0, 16.0, 256.0), fourier_features: int = 128,
                 hidden: int = 256, layers: int = 2, seed: int = 0) -> None:
        super().__init__()
        if dim < 1 or fourier_features < 2 or fourier_features % 2:
            raise BadInput("dim must be positive and fourier_features a positive even number")
        generator = torch.Generator().manual_seed(seed)
        self.config = {"dim": int(dim), "sigmas": [float(s) for s in sigmas], "fourier_features": int(fourier_features),
                       "hidden": int(hidden), "layers": int(layers), "seed": int(seed)}
        with torch.random.fork_rng(devices=[]):  # same seed, same encoder, whatever the caller's RNG state
            torch.manual_seed(seed)
            self.branches = nn.ModuleList(FourierBranch(s, fourier_features, hidden, layers, dim, generator) for s in sigmas)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LocationEncoder:
        return cls(config["dim"], sigmas=tuple(config["sigmas"]), fourier_features=config["fourier_features"],
                   hidden=config["hidden"], layers=config["layers"], seed=config.get("seed", 0))

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        xy = equal_earth(latlon[:, 0], latlon[:, 1])
        return nn.functional.normalize(sum(branch(xy) for branch in self.branches), dim=-1)

    @torch.inference_mode()
    def encode(self, lat: Any, lon: Any, *, batch_size: int = 8192) -> np.ndarray:
        """(n, dim) float32 unit vectors for arrays of degrees."""
        points = torch.as_tensor(np.stack([np.atleast_1d(lat), np.atleast_1d(lon)], axis=1), dtype=torch.float32)
        was_training = self.training
        self.eval()
        try:
            parts = [self(points[s:s + batch_size]) for s in range(0, len(points), batch_size)]
        finally:
            self.train(was_training)
        return (torch.cat(parts) if parts else torch.zeros(0, self.config["dim"])).numpy()


def create_location_encoder(dim: int, *, preset: str = DEFAULT_PRESET, seed: int = 0, **overrides: Any) -> LocationEncoder:
    """A fresh encoder for a target space of dimension `dim` from a named preset."""
    if preset not in PRESETS:
        raise BadInput(f"unknown location encoder preset {preset!r}; presets: {', '.join(PRESETS)}")
    config = {**PRESETS[preset], **overrides}
    return LocationEncoder(dim, seed=seed, **config)
