"""Embedded synthetic PCAM: H&E-like tiles in PCAM's own file format, a pure function of a seed.

What makes the data worth learning from (and why an MLP does worse than a small CNN):
- Tiles are rendered in optical density (Beer-Lambert): a haematoxylin map (nuclei) and an eosin
  map (fibrous stroma, fat walls) are mixed through stain vectors into RGB. Two simulated scanning
  centres differ in their stain vectors and strengths, every slide and every tile varies around them.
- A tile is positive when tumour cells touch the centre 32 x 32 region, PCAM's rule. Tumour
  nuclei differ from the rest only in size and shape (large, irregular, vesicular, with a
  nucleolus), never in colour. Negatives carry as much dark nuclear material in the centre
  (lymphocyte or reactive clusters), and often hold tumour outside the centre.
- Overlap keeps the task short of trivial: low-grade tumour nests with small nuclei, reactive
  clusters with large pale nuclei, positives where a few tumour cells barely touch the centre,
  negatives where a nest stops a pixel or two short of it, blur and sensor noise.
- Background (white glass) and fat (empty vacuoles with thin walls) cover part or all of some tiles.

Tiles are generated in fixed blocks, each from its own seeded random stream, so the output does
not depend on how it is written and memory stays bounded for any size.
"""

from __future__ import annotations

import collections
import functools
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from pcamflow.config import validate_section
from pcamflow.constants import (
    CENTRE,
    FAULTS,
    PLANTED_FILE,
    SPLITS,
    TILE_SHAPE,
    X_KEY,
    Y_KEY,
    Y_SHAPE,
    meta_filename,
    raw_filename,
)
from pcamflow.errors import PcamflowError, check_output_dir
from pcamflow.io import atomic_path, write_csv, write_json

log = logging.getLogger(__name__)

SIZE = TILE_SHAPE[0]
LO = (SIZE - CENTRE) // 2  # first row/column of the centre region
HI = LO + CENTRE  # one past its last
MID = (SIZE - 1) / 2  # continuous coordinate of the tile centre
BLOCK_TILES = 256  # tiles per random stream; fixed so the files never depend on memory settings
SLIDES_PER_SPLIT = 24  # simulated whole-slide images; a slide belongs to one scanning centre
META_COLUMNS = ["coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi", "centre"]
FAULT_FRACTION = {"nan": 0.005, "inf": 0.005, "out_of_range": 0.01, "black": 0.005, "white": 0.005}
DUPLICATES = 5  # train copies of test tiles in the poisoned copy

# --- what a tile holds (probabilities per tile) -------------------------------------------------
P_MARGINAL = 0.35  # positives whose only tumour in the centre is 1-2 cells barely over its edge
P_LOW_GRADE = 0.25  # tumour nests with small, rounder nuclei and faint nucleoli
# centre content of negatives: lymphocyte cluster, reactive cluster, plain stroma, fat, background
NEG_CENTRE = {"lymph": 0.5, "reactive": 0.18, "stroma": 0.12, "fat": 0.1, "background": 0.1}
P_OUTER_NEST = 0.55  # a tumour nest outside the centre (either class)
P_OUTER_LYMPH = 0.45  # a lymphocyte cluster away from the centre (either class)
P_EDGE_FAT = 0.12  # fat covering a tile's edge (either class)
P_EDGE_BACKGROUND = 0.1  # tissue ending at a tile's edge (either class)
BLUR_SIGMA = (0.0, 2.0)  # px, per tile: focus varies
NOISE_SIGMA = (1.5, 4.0)  # grey levels, per tile

# Stain vectors (optical density per unit stain, R, G, B) of the two scanning centres.
H_VECTORS = np.array([[0.65, 0.70, 0.29], [0.52, 0.78, 0.36]])
E_VECTORS = np.array([[0.10, 0.95, 0.30], [0.22, 0.88, 0.42]])
H_STRENGTH = (1.0, 1.2)  # centre B stains nuclei darker ...
E_STRENGTH = (1.0, 0.8)  # ... and stroma paler


@dataclass
class SynthBlock:
    """One block of rendered tiles and what they truly hold."""

    x: np.ndarray  # (B, 96, 96, 3) uint8
    y: np.ndarray  # (B,) uint8: tumour touches the centre region
    tumour: np.ndarray  # (B, 96, 96) bool: pixels covered by tumour nuclei (the annotation)
    wsi: np.ndarray  # (B,) int slide
    centre: np.ndarray  # (B,) int scanning centre (0 or 1)
    coord: np.ndarray  # (B, 2) int position on the slide
    plan: dict[str, np.ndarray]  # what each tile was drawn to hold (see _plan)


def _f32(a) -> np.ndarray:
    """float32 everywhere: half the memory traffic of float64."""
    return np.asarray(a, dtype=np.float32)


# --- random streams -----------------------------------------------------------------------------


def _stream(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


_SLIDE_STREAM, _POISON_STREAM = 1_000_001, 1_000_002


def _slide_stains(seed: int, split: str) -> dict[str, np.ndarray]:
    """Per-slide scanning centre and stain deviation (a slide is scanned once, at one centre)."""
    rng = _stream(seed, _SLIDE_STREAM, SPLITS.index(split))
    centre = np.arange(SLIDES_PER_SPLIT) % 2
    return {
        "centre": centre,
        "h_vec": H_VECTORS[centre] + rng.normal(0, 0.05, (SLIDES_PER_SPLIT, 3)),
        "e_vec": E_VECTORS[centre] + rng.normal(0, 0.05, (SLIDES_PER_SPLIT, 3)),
        "h_gain": np.array(H_STRENGTH)[centre] * rng.lognormal(0, 0.1, SLIDES_PER_SPLIT),
        "e_gain": np.array(E_STRENGTH)[centre] * rng.lognormal(0, 0.15, SLIDES_PER_SPLIT),
    }


# --- geometry -----------------------------------------------------------------------------------

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _distance_to_centre_region(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Euclidean distance from points to the centre region's pixel square (0 inside)."""
    dy = np.maximum(np.maximum(LO - y, y - (HI - 1)), 0)
    dx = np.maximum(np.maximum(LO - x, x - (HI - 1)), 0)
    return np.hypot(dy, dx)


def _point_at_distance(rng, n: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Points whose distance from the tile centre is in [lo, hi], in a random direction."""
    angle = rng.uniform(0, 2 * np.pi, n)
    dist = rng.uniform(lo, hi, n)
    return MID + dist * np.sin(angle), MID + dist * np.cos(angle)


def _cluster_points(rng, tile, cy, cx, radius, spacing):
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


def _nucleus_params(rng, kind: int, n: int, low_grade: np.ndarray | None = None, mean_r=None) -> dict:
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
    return {k: _f32(v) for k, v in p.items()}


def _stamps(y, x, p, half: int):
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


def _smooth_field(rng, n: int, cell: float) -> np.ndarray:
    """Unit-variance random field varying over about `cell` px (two small matrix products
    instead of a full-resolution filter)."""
    weights = _interpolation(cell)
    coarse = rng.standard_normal((n, weights.shape[1], weights.shape[1]), dtype=np.float32)
    return weights @ coarse @ weights.T


def _fibres(rng, n: int) -> np.ndarray:
    """Wavy parallel collagen fibres in [-1, 1]: two sinusoids across a per-tile direction,
    their phase bent by smooth fields."""
    angle = rng.uniform(0, np.pi, (n, 1, 1)).astype(np.float32)
    across = (_YY - MID) * np.cos(angle) - (_XX - MID) * np.sin(angle)
    fib = np.zeros((n, SIZE, SIZE), np.float32)
    for amp, period in ((0.6, (4.0, 7.0)), (0.4, (2.5, 4.0))):
        wavelength = rng.uniform(*period, (n, 1, 1)).astype(np.float32)
        bend = rng.uniform(2, 5, (n, 1, 1)).astype(np.float32) * _smooth_field(rng, n, 20)
        fib += amp * np.sin(2 * np.pi * across / wavelength + bend)
    return fib


def _uniform_noise(rng, shape) -> np.ndarray:
    """Zero-mean unit-variance uniform noise (five times faster to draw than Gaussian)."""
    noise = rng.random(shape, dtype=np.float32)
    noise -= 0.5
    noise *= np.sqrt(12, dtype=np.float32)
    return noise


def _blur(maps: np.ndarray, sigma: np.ndarray) -> np.ndarray:
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


def _fat_walls(rng, n: int) -> np.ndarray:
    """Thin walls between fat vacuoles (Voronoi cell borders), one map per tile.

    The gap between the nearest and second-nearest seed distance is smooth, so it is computed on a
    half-resolution grid and interpolated; the thin wall profile is applied at full resolution."""
    seeds = _f32(rng.uniform(-20, SIZE + 20, (n, 16, 1, 1, 2)))
    half = (np.arange(SIZE // 2, dtype=np.float32) + 0.5) * 2 - 0.5
    d = np.sqrt((half[:, None] - seeds[..., 0]) ** 2 + (half[None, :] - seeds[..., 1]) ** 2)
    d = np.partition(d, 1, axis=1)
    up = _upsample2()
    gap = up @ (d[:, 1] - d[:, 0]) @ up.T
    return np.exp(-((gap / _f32(rng.uniform(1.0, 1.8, (n, 1, 1)))) ** 2))


def _half_plane(rng, n: int, offset: np.ndarray) -> np.ndarray:
    """Soft-edged (wavy) region beyond a line at `offset` px from the tile centre; 1 inside."""
    angle = _f32(rng.uniform(0, 2 * np.pi, (n, 1, 1)))
    signed = (_YY - MID) * np.sin(angle) + (_XX - MID) * np.cos(angle) - _f32(offset)[:, None, None]
    wave = 4 * _smooth_field(rng, n, 12)
    return np.clip((signed + wave) / 2 + 0.5, 0, 1)


# --- a block of tiles ---------------------------------------------------------------------------


def _plan(rng, n: int) -> dict[str, np.ndarray]:
    """What each tile holds: label, centre content, outer structures."""
    label = rng.permutation(np.arange(n) % 2).astype(bool)
    kinds = list(NEG_CENTRE)
    neg_centre = rng.choice(len(kinds), n, p=list(NEG_CENTRE.values()))
    u = rng.uniform
    return {
        "label": label,
        "marginal": label & (u(0, 1, n) < P_MARGINAL),
        "low_grade": u(0, 1, n) < P_LOW_GRADE,
        "centre_kind": np.where(label, -1, neg_centre),  # index into NEG_CENTRE; -1: tumour
        "outer_nest": u(0, 1, n) < P_OUTER_NEST,
        "outer_lymph": u(0, 1, n) < P_OUTER_LYMPH,
        "edge_fat": u(0, 1, n) < P_EDGE_FAT,
        "edge_background": u(0, 1, n) < P_EDGE_BACKGROUND,
    }


def _tissue_regions(rng, plan) -> tuple[np.ndarray, np.ndarray]:
    """Fat and background (no tissue) maps in [0, 1]; they never reach the centre of positives."""
    n = len(plan["label"])
    kinds = list(NEG_CENTRE)
    # over the centre (negatives whose centre is fat/background), else at the edge only
    centre_fat = plan["centre_kind"] == kinds.index("fat")
    centre_bg = plan["centre_kind"] == kinds.index("background")
    edge = rng.uniform(30, 44, n)
    over = rng.uniform(-75, -5, n)
    fat_off = np.where(centre_fat, over, np.where(plan["edge_fat"], edge, 1e3))
    bg_off = np.where(centre_bg, over, np.where(plan["edge_background"], rng.uniform(30, 44, n), 1e3))
    fat = _half_plane(rng, n, fat_off)
    background = _half_plane(rng, n, bg_off) * (1 - fat)
    return fat, background


def _nest_nuclei(rng, plan, tiles, cy, cx, radius, must_avoid_centre):
    """Tumour nuclei of one nest per listed tile (optionally kept clear of the centre region)."""
    n = len(plan["label"])
    low_r, high_r = rng.uniform(4.2, 5.2, n), rng.uniform(4.8, 7.0, n)  # per tile: grade decides size
    mean_r = np.where(plan["low_grade"], low_r, high_r)
    spacing = mean_r[tiles] * rng.uniform(2.0, 2.5, len(tiles))
    t, y, x = _cluster_points(rng, tiles, cy, cx, radius, spacing)
    p = _nucleus_params(rng, TUMOUR, len(t), plan["low_grade"][t], mean_r[t])
    if must_avoid_centre:
        reach = p["r0"] * p["aspect"] * (1 + p["harm"].sum(1))
        gap = rng.uniform(0.5, 8, n)[t]  # some nests stop just short of the centre
        keep = _distance_to_centre_region(y, x) > reach + gap
        t, y, x = t[keep], y[keep], x[keep]
        p = {k: v[keep] for k, v in p.items()}
    return t, y, x, p, mean_r


def _concat(parts):
    """Join (tile, y, x, params) groups of nuclei."""
    parts = [q for q in parts if len(q[0])]
    if not parts:
        return np.zeros(0, int), np.zeros(0), np.zeros(0), None
    t = np.concatenate([q[0] for q in parts])
    y = np.concatenate([q[1] for q in parts])
    x = np.concatenate([q[2] for q in parts])
    p = {k: np.concatenate([q[3][k] for q in parts]) for k in parts[0][3]}
    return t, y, x, p


def _clusters(rng, tiles, cy, cx, radius, spacing, kind):
    t, y, x = _cluster_points(rng, tiles, cy, cx, radius, spacing)
    return t, y, x, _nucleus_params(rng, kind, len(t))


def _place_nuclei(rng, plan):
    """All nuclei of a block: (tumour group, other group), each (tile, y, x, params)."""
    n = len(plan["label"])
    u = rng.uniform
    kinds = list(NEG_CENTRE)
    tumour, other = [], []
    # positives: a nest over the centre, or (marginal) a few tumour cells at its edge
    clear = np.nonzero(plan["label"] & ~plan["marginal"])[0]
    k = len(clear)
    cy, cx = MID + u(-12, 12, k), MID + u(-12, 12, k)
    t, y, x, p, mean_r = _nest_nuclei(rng, plan, clear, cy, cx, u(12, 34, k), False)
    tumour.append((t, y, x, p))
    marginal = np.nonzero(plan["marginal"])[0]
    anchors = np.repeat(marginal, rng.integers(1, 3, len(marginal)))
    side = rng.integers(0, 4, len(anchors))
    along = u(LO - 2, HI + 1, len(anchors))
    r_anchor = mean_r[anchors] * rng.lognormal(0, 0.12, len(anchors))
    depth = u(0.2, 0.95, len(anchors)) * r_anchor  # centre of the cell just outside the edge
    edge_pos = np.select([side == 0, side == 1, side == 2], [LO - depth, HI - 1 + depth, along], along)
    other_pos = np.select([side == 0, side == 1, side == 2], [along, along, LO - depth], HI - 1 + depth)
    p = _nucleus_params(rng, TUMOUR, len(anchors), plan["low_grade"][anchors], r_anchor)
    p["r0"] = _f32(r_anchor)
    p["aspect"][:] = 1.0
    tumour.append((anchors, edge_pos, other_pos, p))
    # a tumour nest outside the centre: every marginal positive, and any tile by chance
    outer = np.nonzero(plan["outer_nest"] | plan["marginal"])[0]
    k = len(outer)
    oy, ox = _point_at_distance(rng, k, 38, 60)
    t, y, x, p, _ = _nest_nuclei(rng, plan, outer, oy, ox, u(14, 30, k), True)
    tumour.append((t, y, x, p))
    # negatives: as much dark nuclear material in the centre, as clusters of other nuclei
    for kind_name, kind, spacing in (("lymph", LYMPH, (5.8, 8.0)), ("reactive", REACTIVE, (8.5, 11.0))):
        tiles = np.nonzero(plan["centre_kind"] == kinds.index(kind_name))[0]
        k = len(tiles)
        cy, cx = MID + u(-10, 10, k), MID + u(-10, 10, k)
        other.append(_clusters(rng, tiles, cy, cx, u(12, 30, k), u(*spacing, k), kind))
    tiles = np.nonzero(plan["outer_lymph"])[0]
    k = len(tiles)
    oy, ox = _point_at_distance(rng, k, 34, 60)
    other.append(_clusters(rng, tiles, oy, ox, u(10, 24, k), u(5.8, 8.0, k), LYMPH))
    # scattered stromal cells everywhere
    count = rng.poisson(10, n)
    tiles = np.repeat(np.arange(n), count)
    y, x = u(-3, SIZE + 2, len(tiles)), u(-3, SIZE + 2, len(tiles))
    fibro = u(0, 1, len(tiles)) < 0.6
    for kind, sel in ((FIBRO, fibro), (LYMPH, ~fibro)):
        other.append((tiles[sel], y[sel], x[sel], _nucleus_params(rng, kind, int(sel.sum()))))
    return _concat(tumour), _concat(other)


def _drop_outside_tissue(group, tissue: np.ndarray):
    """Remove nuclei whose centre lies in fat or background."""
    t, y, x, p = group
    if p is None:
        return group
    yi = np.clip(np.rint(y).astype(int), 0, SIZE - 1)
    xi = np.clip(np.rint(x).astype(int), 0, SIZE - 1)
    keep = tissue[t, yi, xi] > 0.5
    return t[keep], y[keep], x[keep], {k: v[keep] for k, v in p.items()}


def _nuclear_maps(group, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin density and nuclear coverage maps of one group of nuclei.

    Small nuclei use small stamps (speed); stamps are summed into the maps (optical density adds)."""
    t, y, x, p = group
    size = n * SIZE * SIZE
    if p is None:
        return np.zeros((n, SIZE, SIZE), np.float32), np.zeros((n, SIZE, SIZE), np.float32)
    reach = p["r0"] * p["aspect"] * (1 + p["harm"].sum(1))
    flat, dens, cover = [], [], []
    for lo, hi, half in ((0, 4.5, 5), (4.5, 7.5, 8), (7.5, np.inf, 12)):
        sel = (reach > lo) & (reach <= hi)
        if not sel.any():
            continue
        rows, cols, d, c = _stamps(y[sel], x[sel], {k: v[sel] for k, v in p.items()}, half)
        ok = (rows >= 0) & (rows < SIZE) & (cols >= 0) & (cols < SIZE)
        flat.append(((t[sel, None, None] * SIZE + rows) * SIZE + cols)[ok])
        dens.append(d[ok])
        cover.append(c[ok])
    flat = np.concatenate(flat)
    density = np.bincount(flat, np.concatenate(dens), minlength=size)
    coverage = np.bincount(flat, np.concatenate(cover), minlength=size)
    return _f32(density).reshape(n, SIZE, SIZE), _f32(coverage).reshape(n, SIZE, SIZE)


def _to_rgb(rng, maps: np.ndarray, h_vec: np.ndarray, e_vec: np.ndarray) -> np.ndarray:
    """Beer-Lambert: (B, 2, 96, 96) stain maps -> uint8 RGB, with glass tint, light level and noise."""
    n = len(maps)
    u = rng.uniform
    mix = _f32(np.stack([h_vec, e_vec, u(0.0, 0.06, (n, 3))], axis=1))  # (B, 3 inputs, 3 channels)
    inputs = np.concatenate([maps, np.ones_like(maps[:, :1])], axis=1).reshape(n, 3, -1)
    img = np.matmul(inputs.transpose(0, 2, 1), mix)  # optical density (B, 9216, 3)
    np.negative(img, out=img)
    np.exp(img, out=img)
    img *= _f32(255 * u(0.91, 0.97, (n, 1, 1)))
    noise = _uniform_noise(rng, img.shape)
    noise *= _f32(u(*NOISE_SIGMA, (n, 1, 1)))
    img += noise
    np.rint(img, out=img)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8).reshape(n, SIZE, SIZE, 3)


def render_block(rng: np.random.Generator, n: int, stains: dict[str, np.ndarray]) -> SynthBlock:
    """Render n tiles from one random stream; `stains` holds the split's per-slide stains."""
    plan = _plan(rng, n)
    u = rng.uniform
    fat, background = _tissue_regions(rng, plan)
    tissue = (1 - fat) * (1 - background)
    tumour_group, other_group = _place_nuclei(rng, plan)
    tumour_h, tumour_cover = _nuclear_maps(_drop_outside_tissue(tumour_group, tissue), n)
    other_h, _ = _nuclear_maps(_drop_outside_tissue(other_group, tissue), n)
    tumour = tumour_cover > 0.5
    haem = tumour_h + other_h
    haem *= 1 + 0.12 * _uniform_noise(rng, haem.shape)  # granular chromatin
    # eosin: fibrous stroma, paler where nuclei sit, walls in fat, nearly nothing in background
    fibres = _fibres(rng, n)
    patches = _smooth_field(rng, n, 16)
    stroma = _f32(u(0.25, 0.5, (n, 1, 1))) * np.clip(1 + 0.25 * fibres + 0.2 * patches, 0.15, None)
    stroma *= 1 - 0.6 * np.clip(haem, 0, 1)
    walls = np.zeros_like(fat)
    has_fat = np.nonzero(fat.max(axis=(1, 2)) > 0.01)[0]
    if len(has_fat):
        walls[has_fat] = _fat_walls(rng, len(has_fat)) * _f32(u(0.3, 0.6, (len(has_fat), 1, 1)))
    eosin = stroma * tissue + walls * fat + 0.02 * background
    haem *= tissue
    # stain: slide (scanning centre) plus strong per-tile variation
    wsi = rng.integers(0, SLIDES_PER_SPLIT, n)
    h_vec = stains["h_vec"][wsi] + rng.normal(0, 0.04, (n, 3))
    e_vec = stains["e_vec"][wsi] + rng.normal(0, 0.04, (n, 3))
    h_vec = np.clip(h_vec, 0.02, None) * (stains["h_gain"][wsi] * rng.lognormal(0, 0.2, n))[:, None]
    e_vec = np.clip(e_vec, 0.02, None) * (stains["e_gain"][wsi] * rng.lognormal(0, 0.25, n))[:, None]
    maps = _blur(np.stack([haem, eosin], axis=1), u(*BLUR_SIGMA, n))
    x = _to_rgb(rng, maps, h_vec, e_vec)
    y = tumour[:, LO:HI, LO:HI].any(axis=(1, 2)).astype(np.uint8)
    coord = rng.integers(0, 100_000, (n, 2))
    return SynthBlock(x=x, y=y, tumour=tumour, wsi=wsi, centre=stains["centre"][wsi], coord=coord, plan=plan)


def _render_job(seed: int, split: str, k: int, n: int, stains: dict[str, np.ndarray]) -> SynthBlock:
    """Block k of a split: its own random stream, so blocks can be rendered in any process."""
    # thousands of tiny matrix products: BLAS threads only add overhead (tenfold on a busy machine)
    with threadpool_limits(limits=1, user_api="blas"):
        return render_block(_stream(seed, SPLITS.index(split), k), n, stains)


def generate_split(seed: int, split: str, n: int, workers: int = 1) -> Iterator[tuple[int, SynthBlock]]:
    """Yield (first tile index, block) for a split of n tiles, in order, block by block.

    workers > 1 renders blocks in that many processes (same output); at most two blocks per
    worker wait in memory."""
    stains = _slide_stains(seed, split)
    starts = range(0, n, BLOCK_TILES)
    jobs = [(start, (seed, split, k, min(BLOCK_TILES, n - start), stains)) for k, start in enumerate(starts)]
    if workers <= 1 or len(jobs) == 1:
        for start, job in jobs:
            yield start, _render_job(*job)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = collections.deque()
        for start, job in jobs:
            pending.append((start, pool.submit(_render_job, *job)))
            if len(pending) >= 2 * workers:
                first, future = pending.popleft()
                yield first, future.result()
        for first, future in pending:
            yield first, future.result()


# --- the poisoned course-style copy -------------------------------------------------------------


def plan_poison(seed: int, sizes: dict[str, int]) -> dict:
    """Which tiles get which fault, and which train tiles become copies of test tiles.

    Every tile gets at most one fault; duplicates are planted on tiles without one."""
    rng = _stream(seed, _POISON_STREAM)
    splits, clean = {}, {}
    for split in SPLITS:
        n = sizes[split]
        order = rng.permutation(n)
        planted, used = {}, 0
        for fault in FAULTS:
            k = min(max(1, round(FAULT_FRACTION[fault] * n)), max(0, n - used - 1))
            planted[fault] = sorted(int(i) for i in order[used : used + k])
            used += k
        splits[split] = planted
        clean[split] = order[used:]
    k = min(DUPLICATES, len(clean["train"]), len(clean["test"]))
    duplicates = [
        {"split_a": "train", "index_a": int(a), "split_b": "test", "index_b": int(b)}
        for a, b in sorted(zip(clean["train"][:k], clean["test"][:k]))
    ]
    return {"poison": True, "seed": seed, "splits": splits, "cross_split_duplicates": duplicates}


def clean_record(seed: int) -> dict:
    """The planted record of clean data: nothing planted."""
    splits = {split: {fault: [] for fault in FAULTS} for split in SPLITS}
    return {"poison": False, "seed": seed, "splits": splits, "cross_split_duplicates": []}


def _apply_fault(tile: np.ndarray, fault: str, rng: np.random.Generator) -> None:
    """Plant one fault into a float32 tile in place."""
    pixels = tile.reshape(-1, 3)
    some = rng.choice(len(pixels), int(rng.integers(20, 400)), replace=False)
    if fault == "nan":
        pixels[some, rng.integers(0, 3, len(some))] = np.nan
    elif fault == "inf":
        pixels[some, rng.integers(0, 3, len(some))] = rng.choice([np.inf, -np.inf], len(some))
    elif fault == "out_of_range":
        # far above 255 and below 0, like a bad rescaling
        values = rng.uniform(300, 20_000, len(some)) * rng.choice([1, -1], len(some))
        values[:2] = [rng.uniform(300, 20_000), -rng.uniform(1, 20_000)]
        pixels[some, rng.integers(0, 3, len(some))] = values
    elif fault == "black":
        tile[...] = 0
    elif fault == "white":
        tile[...] = 255


def _poison_block(x: np.ndarray, start: int, planted: dict, seed: int, split: str) -> np.ndarray:
    """float32 copy of a block with this block's planted faults."""
    out = x.astype(np.float32)
    for fault, indices in planted.items():
        for i in indices:
            if start <= i < start + len(x):
                _apply_fault(out[i - start], fault, _stream(seed, _POISON_STREAM, SPLITS.index(split), i))
    return out


# --- files --------------------------------------------------------------------------------------

Tile = tuple[np.ndarray, int, pd.Series]  # one tile's x, y and meta row


def _write_split(
    out_dir: Path,
    seed: int,
    split: str,
    n: int,
    record: dict,
    workers: int,
    keep=(),
    replace: dict[int, Tile] | None = None,
) -> dict[int, Tile]:
    """Write one split's x/y H5 files and meta CSV, block by block.

    replace: tiles written instead of the generated ones (planted duplicates); keep: indices of
    clean tiles to hand back (the test tiles that train copies)."""
    replace = replace or {}
    poison = record["poison"]
    kept, meta_parts = {}, []
    with (
        atomic_path(out_dir / raw_filename(split, "x")) as x_tmp,
        atomic_path(out_dir / raw_filename(split, "y")) as y_tmp,
        h5py.File(x_tmp, "w") as fx,
        h5py.File(y_tmp, "w") as fy,
    ):
        # uncompressed and contiguous like PCAM's files (so a float32 course copy is 4x the size)
        dx = fx.create_dataset(X_KEY, (n, *TILE_SHAPE), np.float32 if poison else np.uint8)
        dy = fy.create_dataset(Y_KEY, (n, *Y_SHAPE), np.uint8)
        for start, block in generate_split(seed, split, n, workers):
            meta = _meta_frame(block, split)
            stop = start + len(block.y)
            for i in range(start, stop):
                if i in replace:
                    block.x[i - start], block.y[i - start], meta.iloc[i - start] = replace[i]
                if i in keep:
                    kept[i] = (block.x[i - start].copy(), block.y[i - start], meta.iloc[i - start].copy())
            dx[start:stop] = (
                _poison_block(block.x, start, record["splits"][split], seed, split) if poison else block.x
            )
            dy[start:stop] = block.y.reshape(-1, *Y_SHAPE)
            meta_parts.append(meta)
    write_csv(out_dir / meta_filename(split), pd.concat(meta_parts, ignore_index=True))
    return kept


def _meta_frame(block: SynthBlock, split: str) -> pd.DataFrame:
    """PCAM's meta columns plus the scanning centre, one row per tile."""
    return pd.DataFrame(
        {
            "coord_y": block.coord[:, 0],
            "coord_x": block.coord[:, 1],
            "tumor_patch": block.tumour.any(axis=(1, 2)),
            "center_tumor_patch": block.y.astype(bool),
            "wsi": [f"synthetic_{split}_{w:03d}" for w in block.wsi],
            "centre": block.centre,
        },
        columns=META_COLUMNS,
    )


def write_synthetic(
    out_dir: str | os.PathLike,
    *,
    n_train: int,
    n_valid: int,
    n_test: int,
    seed: int,
    poison: bool,
    workers: int = 1,
    overwrite: bool = False,
) -> dict:
    """Write the six PCAM-format H5 files, three meta CSVs and planted.json into out_dir.

    workers: processes rendering blocks (the files are the same for any number).
    overwrite: replace such files already in out_dir (else they are refused: they may be real data).
    Returns the planted record (what planted.json holds)."""
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    # the `synthetic:` schema checks what a config would (the CLI and library calls skip the config)
    settings = {f"n_{split}": n for split, n in sizes.items()} | {"seed": seed, "poison": poison}
    validate_section("synthetic", settings, source="synth")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PcamflowError(f"synth workers: must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir)
    present = [name for name in synthetic_files() if (out_dir / name).exists()]
    if present and not overwrite:
        raise PcamflowError(
            f"{out_dir}: already holds {', '.join(present[:2])}{' ...' if len(present) > 2 else ''} "
            f"({len(present)} PCAM-named files); refusing to overwrite them (pcamflow synth --overwrite replaces them)"
        )
    record = plan_poison(seed, sizes) if poison else clean_record(seed)
    duplicates = record["cross_split_duplicates"]
    started = time.perf_counter()
    # test first: train's planted duplicates are copies of test tiles
    keep = {d["index_b"] for d in duplicates}
    test_tiles = _write_split(out_dir, seed, "test", n_test, record, workers, keep=keep)
    _write_split(out_dir, seed, "valid", n_valid, record, workers)
    copies = {d["index_a"]: test_tiles[d["index_b"]] for d in duplicates}
    _write_split(out_dir, seed, "train", n_train, record, workers, replace=copies)
    write_json(out_dir / PLANTED_FILE, record)
    kind = "poisoned" if poison else "clean"
    log.info("synthetic PCAM (%s) written to %s in %.1f s", kind, out_dir, time.perf_counter() - started)
    return record


def synthetic_files() -> list[str]:
    """Names of every file write_synthetic writes."""
    names = [raw_filename(s, k) for s in SPLITS for k in ("x", "y")]
    return names + [meta_filename(s) for s in SPLITS] + [PLANTED_FILE]


def cli_main(args) -> int:
    """`pcamflow synth`: write the synthetic dataset to --out (sizes and seed default to the schema's)."""
    given = {key: getattr(args, key) for key in ("n_train", "n_valid", "n_test", "seed")}
    settings = validate_section(
        "synthetic", {k: v for k, v in given.items() if v is not None}, source="pcamflow synth"
    )
    sizes = {key: settings[key] for key in given}
    check_output_dir(args.out)
    record = write_synthetic(
        args.out,
        **sizes,
        poison=args.poison,
        workers=args.workers,
        overwrite=getattr(args, "overwrite", False),
    )
    faulty = sum(len(tiles) for split in record["splits"].values() for tiles in split.values())
    duplicates = len(record["cross_split_duplicates"])
    print(f"wrote synthetic PCAM to {args.out} ({faulty} faulty tiles, {duplicates} planted duplicates)")
    return 0
