"""The pieces synthetic tiles are drawn from: seeded random streams, tile geometry, nuclei (shape
and stain parameters, stamped densities) and smooth random fields (stroma fibres, fat walls, tissue
edges, blur, sensor noise). pcamflow.data.synth_tiles assembles them into tiles."""

from __future__ import annotations

import functools

import numpy as np

from pcamflow.constants import CENTRE, TILE_SHAPE

SIZE = TILE_SHAPE[0]
LO = (SIZE - CENTRE) // 2  # first row/column of the centre region
HI = LO + CENTRE  # one past its last
MID = (SIZE - 1) / 2  # continuous coordinate of the tile centre


def f32(a) -> np.ndarray:
    """float32 everywhere: half the memory traffic of float64."""
    return np.asarray(a, dtype=np.float32)


# --- random streams -----------------------------------------------------------------------------


def stream(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


# keys of the streams of the slides' stains and of the planted faults, apart from every block's
# (split, block) keys
SLIDE_STREAM, POISON_STREAM = 1_000_001, 1_000_002


# --- geometry -----------------------------------------------------------------------------------

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def distance_to_centre_region(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Euclidean distance from points to the centre region's pixel square (0 inside)."""
    dy = np.maximum(np.maximum(LO - y, y - (HI - 1)), 0)
    dx = np.maximum(np.maximum(LO - x, x - (HI - 1)), 0)
    return np.hypot(dy, dx)


def point_at_distance(rng, n: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Points whose distance from the tile centre is in [lo, hi], in a random direction."""
    angle = rng.uniform(0, 2 * np.pi, n)
    dist = rng.uniform(lo, hi, n)
    return MID + dist * np.sin(angle), MID + dist * np.cos(angle)


def cluster_points(rng, tile, cy, cx, radius, spacing):
    """Hexagonally packed, jittered points inside one wavy disc per listed tile.

    Returns (tile index, y, x) of every point, flattened over tiles."""
    n = len(tile)
    if n == 0:
        return (np.zeros(0, int), np.zeros(0), np.zeros(0))
    rows = int(np.ceil(SIZE / (0.866 * spacing.min()))) + 3
    cols = int(np.ceil(SIZE / spacing.min())) + 3
    r, c = np.mgrid[0:rows, 0:cols]
    r, c = r.ravel()[None, :], c.ravel()[None, :]
    off = rng.uniform(0, 1, (n, 2))
    s = spacing[:, None]
    py = (r - 1 - off[:, :1]) * 0.866 * s
    px = (c - 1 - off[:, 1:] + 0.5 * (r % 2)) * s
    py = py + rng.uniform(-0.3, 0.3, py.shape) * s
    px = px + rng.uniform(-0.3, 0.3, px.shape) * s
    dy, dx = py - cy[:, None], px - cx[:, None]
    theta = np.arctan2(dy, dx)
    phase = rng.uniform(0, 2 * np.pi, (n, 2))
    edge = radius[:, None] * (
        1 + 0.18 * np.cos(2 * theta + phase[:, :1]) + 0.1 * np.cos(3 * theta + phase[:, 1:])
    )
    inside = (np.hypot(dy, dx) < edge) & (py > -6) & (py < SIZE + 5) & (px > -6) & (px < SIZE + 5)
    t_idx, p_idx = np.nonzero(inside)
    return tile[t_idx], py[t_idx, p_idx], px[t_idx, p_idx]


# --- nuclei -------------------------------------------------------------------------------------

LYMPH, FIBRO, REACTIVE, TUMOUR = range(4)


def nucleus_params(rng, kind: int, n: int, low_grade: np.ndarray | None = None, mean_r=None) -> dict:
    """Shape and stain parameters of n nuclei of one kind (tumour: per-tile grade and mean radius)."""
    u = rng.uniform
    p = {"harm": np.zeros((n, 3)), "v": np.zeros(n), "nuc_amp": np.zeros(n), "angle": u(0, np.pi, n)}
    if kind == LYMPH:
        p.update(r0=u(2.2, 3.3, n), aspect=u(1.0, 1.2, n), d=u(1.2, 1.8, n))
        p["harm"] = u(0, 0.05, (n, 3))
    elif kind == FIBRO:
        p.update(r0=u(1.3, 2.0, n), aspect=u(2.2, 3.8, n), d=u(1.0, 1.6, n))
        p["harm"] = u(0, 0.04, (n, 3))
    elif kind == REACTIVE:
        p.update(r0=u(3.0, 4.2, n), aspect=u(1.0, 1.35, n), d=u(0.9, 1.4, n), v=u(0.1, 0.3, n))
        p["harm"] = u(0, 0.06, (n, 3))
        p["nuc_amp"] = np.where(u(0, 1, n) < 0.15, u(0.2, 0.4, n), 0.0)
    else:
        low = low_grade
        p.update(r0=mean_r * rng.lognormal(0, 0.12, n), aspect=u(1.0, 1.5, n), d=u(1.0, 1.5, n))
        p["harm"] = u(0, 1, (n, 3)) * np.where(low, 0.09, 0.14)[:, None]
        p["v"] = np.where(low, u(0.3, 0.5, n), u(0.35, 0.65, n))
        has_nucleolus = u(0, 1, n) < np.where(low, 0.6, 0.85)
        p["nuc_amp"] = np.where(has_nucleolus, np.where(low, u(0.2, 0.6, n), u(0.5, 1.0, n)), 0.0)
    p["phase"] = u(0, 2 * np.pi, (n, 3))
    p["nuc_off"] = u(-0.35, 0.35, (n, 2)) * p["r0"][:, None]
    p["nuc_sigma"] = u(0.7, 1.1, n)
    # keep every nucleus inside its stamp
    reach = p["r0"] * p["aspect"] * (1 + p["harm"].sum(1))
    p["r0"] = p["r0"] * np.minimum(1, 11.5 / reach)
    return {k: f32(v) for k, v in p.items()}


def stamps(y, x, p, half: int):
    """Density and coverage of nuclei on (2 half + 1)^2 stamps around their centres.

    Returns (row, column, density, coverage) per stamp pixel, each (N, S, S)."""
    off = np.arange(-half, half + 1, dtype=np.float32)
    iy, ix = np.rint(y).astype(int), np.rint(x).astype(int)
    dy = (iy - y).astype(np.float32)[:, None, None] + off[None, :, None]
    dx = (ix - x).astype(np.float32)[:, None, None] + off[None, None, :]
    ca, sa = np.cos(p["angle"])[:, None, None], np.sin(p["angle"])[:, None, None]
    u = (dy * ca + dx * sa) / p["aspect"][:, None, None]
    w = -dy * sa + dx * ca
    rho = np.hypot(u, w) + 1e-6
    z = (u + 1j * w) / rho  # e^{i theta}: harmonics k = 2, 3, 4 without trigonometry per pixel
    z2 = z * z
    coef = p["harm"] * np.exp(1j * p["phase"])
    wobble = np.real(z2 * (coef[:, 0, None, None] + z * coef[:, 1, None, None] + z2 * coef[:, 2, None, None]))
    r = p["r0"][:, None, None] * (1 + wobble)
    inside = np.clip(r - rho + 0.5, 0, 1)
    interior = np.clip((r - rho - 1.2) / 1.5, 0, 1)  # vesicular: chromatin at the membrane
    dens = inside * (1 - p["v"][:, None, None] * interior)
    if p["nuc_amp"].any():
        ny = dy - p["nuc_off"][:, 0, None, None]
        nx = dx - p["nuc_off"][:, 1, None, None]
        sig2 = 2 * p["nuc_sigma"][:, None, None] ** 2
        dens += p["nuc_amp"][:, None, None] * np.exp(-(ny * ny + nx * nx) / sig2) * inside
    dens *= p["d"][:, None, None]
    rows = iy[:, None, None] + off.astype(int)[None, :, None]
    cols = ix[:, None, None] + off.astype(int)[None, None, :]
    return rows, cols, dens, inside


# --- fields -------------------------------------------------------------------------------------


@functools.lru_cache
def _interpolation(cell: float) -> np.ndarray:
    """(96, K) Gaussian weights from K knots `cell` px apart, each row scaled so that a field
    interpolated from unit-variance knots has unit variance at every pixel."""
    knots = np.arange(-cell, SIZE + 2 * cell, cell, dtype=np.float32)
    weights = np.exp(-(((np.arange(SIZE, dtype=np.float32)[:, None] - knots[None, :]) / (0.8 * cell)) ** 2))
    weights[weights < 1e-6] = 0  # no subnormal floats (slow)
    return weights / np.sqrt((weights**2).sum(axis=1, keepdims=True))


def smooth_field(rng, n: int, cell: float) -> np.ndarray:
    """Unit-variance random field varying over about `cell` px (two small matrix products
    instead of a full-resolution filter)."""
    weights = _interpolation(cell)
    coarse = rng.standard_normal((n, weights.shape[1], weights.shape[1]), dtype=np.float32)
    return weights @ coarse @ weights.T


def fibres(rng, n: int) -> np.ndarray:
    """Wavy parallel collagen fibres in [-1, 1]: two sinusoids across a per-tile direction,
    their phase bent by smooth fields."""
    angle = rng.uniform(0, np.pi, (n, 1, 1)).astype(np.float32)
    across = (_YY - MID) * np.cos(angle) - (_XX - MID) * np.sin(angle)
    fib = np.zeros((n, SIZE, SIZE), np.float32)
    for amp, period in ((0.6, (4.0, 7.0)), (0.4, (2.5, 4.0))):
        wavelength = rng.uniform(*period, (n, 1, 1)).astype(np.float32)
        bend = rng.uniform(2, 5, (n, 1, 1)).astype(np.float32) * smooth_field(rng, n, 20)
        fib += amp * np.sin(2 * np.pi * across / wavelength + bend)
    return fib


def uniform_noise(rng, shape) -> np.ndarray:
    """Zero-mean unit-variance uniform noise (five times faster to draw than Gaussian)."""
    noise = rng.random(shape, dtype=np.float32)
    noise -= 0.5
    noise *= np.sqrt(12, dtype=np.float32)
    return noise


def blur(maps: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian blur of (B, C, 96, 96) maps with a per-tile sigma (focus): G @ map @ G^T, where
    G is the tile's (96, 96) blur matrix with edge rows renormalised."""
    sigma = np.maximum(sigma, 0.2).astype(np.float32)[:, None, None]
    grid = np.arange(SIZE, dtype=np.float32)
    g = np.exp(-((grid[:, None] - grid[None, :]) ** 2)[None] / (2 * sigma**2))
    g[g < 1e-6] = 0  # subnormal floats would slow the products down tenfold
    g /= g.sum(axis=2, keepdims=True)
    g = g[:, None]
    return g @ maps @ g.transpose(0, 1, 3, 2)


@functools.lru_cache
def _upsample2() -> np.ndarray:
    """(96, 48) linear interpolation from a half-resolution grid (pixel centres aligned)."""
    coarse = (np.arange(SIZE // 2, dtype=np.float32) + 0.5) * 2 - 0.5
    fine = np.arange(SIZE, dtype=np.float32)
    return np.maximum(0, 1 - np.abs(fine[:, None] - coarse[None, :]) / 2)


def fat_walls(rng, n: int) -> np.ndarray:
    """Thin walls between fat vacuoles (Voronoi cell borders), one map per tile.

    The gap between the nearest and second-nearest seed distance is smooth, so it is computed on a
    half-resolution grid and interpolated; the thin wall profile is applied at full resolution."""
    seeds = f32(rng.uniform(-20, SIZE + 20, (n, 16, 1, 1, 2)))
    half = (np.arange(SIZE // 2, dtype=np.float32) + 0.5) * 2 - 0.5
    d = np.sqrt((half[:, None] - seeds[..., 0]) ** 2 + (half[None, :] - seeds[..., 1]) ** 2)
    d = np.partition(d, 1, axis=1)
    up = _upsample2()
    gap = up @ (d[:, 1] - d[:, 0]) @ up.T
    return np.exp(-((gap / f32(rng.uniform(1.0, 1.8, (n, 1, 1)))) ** 2))


def half_plane(rng, n: int, offset: np.ndarray) -> np.ndarray:
    """Soft-edged (wavy) region beyond a line at `offset` px from the tile centre; 1 inside."""
    angle = f32(rng.uniform(0, 2 * np.pi, (n, 1, 1)))
    signed = (_YY - MID) * np.sin(angle) + (_XX - MID) * np.cos(angle) - f32(offset)[:, None, None]
    wave = 4 * smooth_field(rng, n, 12)
    return np.clip((signed + wave) / 2 + 0.5, 0, 1)
