"""Synthetic H&E-like tiles, block by block, each block a pure function of the seed (the files:
pcamflow.data.synthesize).

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
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from pcamflow.constants import SPLITS
from pcamflow.data.synth_tissue import (
    FIBRO,
    HI,
    LO,
    LYMPH,
    MID,
    REACTIVE,
    SIZE,
    SLIDE_STREAM,
    TUMOUR,
    blur,
    cluster_points,
    distance_to_centre_region,
    f32,
    fat_walls,
    fibres,
    half_plane,
    nucleus_params,
    point_at_distance,
    smooth_field,
    stamps,
    stream,
    uniform_noise,
)

BLOCK_TILES = 256  # tiles per random stream; fixed so the files never depend on memory settings
SLIDES_PER_SPLIT = 24  # simulated whole-slide images; a slide belongs to one scanning centre

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


def _slide_stains(seed: int, split: str) -> dict[str, np.ndarray]:
    """Per-slide scanning centre and stain deviation (a slide is scanned once, at one centre)."""
    rng = stream(seed, SLIDE_STREAM, SPLITS.index(split))
    centre = np.arange(SLIDES_PER_SPLIT) % 2
    return {
        "centre": centre,
        "h_vec": H_VECTORS[centre] + rng.normal(0, 0.05, (SLIDES_PER_SPLIT, 3)),
        "e_vec": E_VECTORS[centre] + rng.normal(0, 0.05, (SLIDES_PER_SPLIT, 3)),
        "h_gain": np.array(H_STRENGTH)[centre] * rng.lognormal(0, 0.1, SLIDES_PER_SPLIT),
        "e_gain": np.array(E_STRENGTH)[centre] * rng.lognormal(0, 0.15, SLIDES_PER_SPLIT),
    }


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
    fat = half_plane(rng, n, fat_off)
    background = half_plane(rng, n, bg_off) * (1 - fat)
    return fat, background


def _nest_nuclei(rng, plan, tiles, cy, cx, radius, must_avoid_centre):
    """Tumour nuclei of one nest per listed tile (optionally kept clear of the centre region)."""
    n = len(plan["label"])
    low_r, high_r = rng.uniform(4.2, 5.2, n), rng.uniform(4.8, 7.0, n)  # per tile: grade decides size
    mean_r = np.where(plan["low_grade"], low_r, high_r)
    spacing = mean_r[tiles] * rng.uniform(2.0, 2.5, len(tiles))
    t, y, x = cluster_points(rng, tiles, cy, cx, radius, spacing)
    p = nucleus_params(rng, TUMOUR, len(t), plan["low_grade"][t], mean_r[t])
    if must_avoid_centre:
        reach = p["r0"] * p["aspect"] * (1 + p["harm"].sum(1))
        gap = rng.uniform(0.5, 8, n)[t]  # some nests stop just short of the centre
        keep = distance_to_centre_region(y, x) > reach + gap
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
    t, y, x = cluster_points(rng, tiles, cy, cx, radius, spacing)
    return t, y, x, nucleus_params(rng, kind, len(t))


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
    p = nucleus_params(rng, TUMOUR, len(anchors), plan["low_grade"][anchors], r_anchor)
    p["r0"] = f32(r_anchor)
    p["aspect"][:] = 1.0
    tumour.append((anchors, edge_pos, other_pos, p))
    # a tumour nest outside the centre: every marginal positive, and any tile by chance
    outer = np.nonzero(plan["outer_nest"] | plan["marginal"])[0]
    k = len(outer)
    oy, ox = point_at_distance(rng, k, 38, 60)
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
    oy, ox = point_at_distance(rng, k, 34, 60)
    other.append(_clusters(rng, tiles, oy, ox, u(10, 24, k), u(5.8, 8.0, k), LYMPH))
    # scattered stromal cells everywhere
    count = rng.poisson(10, n)
    tiles = np.repeat(np.arange(n), count)
    y, x = u(-3, SIZE + 2, len(tiles)), u(-3, SIZE + 2, len(tiles))
    fibro = u(0, 1, len(tiles)) < 0.6
    for kind, sel in ((FIBRO, fibro), (LYMPH, ~fibro)):
        other.append((tiles[sel], y[sel], x[sel], nucleus_params(rng, kind, int(sel.sum()))))
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
        rows, cols, d, c = stamps(y[sel], x[sel], {k: v[sel] for k, v in p.items()}, half)
        ok = (rows >= 0) & (rows < SIZE) & (cols >= 0) & (cols < SIZE)
        flat.append(((t[sel, None, None] * SIZE + rows) * SIZE + cols)[ok])
        dens.append(d[ok])
        cover.append(c[ok])
    flat = np.concatenate(flat)
    density = np.bincount(flat, np.concatenate(dens), minlength=size)
    coverage = np.bincount(flat, np.concatenate(cover), minlength=size)
    return f32(density).reshape(n, SIZE, SIZE), f32(coverage).reshape(n, SIZE, SIZE)


def _to_rgb(rng, maps: np.ndarray, h_vec: np.ndarray, e_vec: np.ndarray) -> np.ndarray:
    """Beer-Lambert: (B, 2, 96, 96) stain maps -> uint8 RGB, with glass tint, light level and noise."""
    n = len(maps)
    u = rng.uniform
    mix = f32(np.stack([h_vec, e_vec, u(0.0, 0.06, (n, 3))], axis=1))  # (B, 3 inputs, 3 channels)
    inputs = np.concatenate([maps, np.ones_like(maps[:, :1])], axis=1).reshape(n, 3, -1)
    img = np.matmul(inputs.transpose(0, 2, 1), mix)  # optical density (B, 9216, 3)
    np.negative(img, out=img)
    np.exp(img, out=img)
    img *= f32(255 * u(0.91, 0.97, (n, 1, 1)))
    noise = uniform_noise(rng, img.shape)
    noise *= f32(u(*NOISE_SIGMA, (n, 1, 1)))
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
    haem *= 1 + 0.12 * uniform_noise(rng, haem.shape)  # granular chromatin
    # eosin: fibrous stroma, paler where nuclei sit, walls in fat, nearly nothing in background
    fibre = fibres(rng, n)
    patches = smooth_field(rng, n, 16)
    stroma = f32(u(0.25, 0.5, (n, 1, 1))) * np.clip(1 + 0.25 * fibre + 0.2 * patches, 0.15, None)
    stroma *= 1 - 0.6 * np.clip(haem, 0, 1)
    walls = np.zeros_like(fat)
    has_fat = np.nonzero(fat.max(axis=(1, 2)) > 0.01)[0]
    if len(has_fat):
        walls[has_fat] = fat_walls(rng, len(has_fat)) * f32(u(0.3, 0.6, (len(has_fat), 1, 1)))
    eosin = stroma * tissue + walls * fat + 0.02 * background
    haem *= tissue
    # stain: slide (scanning centre) plus strong per-tile variation
    wsi = rng.integers(0, SLIDES_PER_SPLIT, n)
    h_vec = stains["h_vec"][wsi] + rng.normal(0, 0.04, (n, 3))
    e_vec = stains["e_vec"][wsi] + rng.normal(0, 0.04, (n, 3))
    h_vec = np.clip(h_vec, 0.02, None) * (stains["h_gain"][wsi] * rng.lognormal(0, 0.2, n))[:, None]
    e_vec = np.clip(e_vec, 0.02, None) * (stains["e_gain"][wsi] * rng.lognormal(0, 0.25, n))[:, None]
    maps = blur(np.stack([haem, eosin], axis=1), u(*BLUR_SIGMA, n))
    x = _to_rgb(rng, maps, h_vec, e_vec)
    y = tumour[:, LO:HI, LO:HI].any(axis=(1, 2)).astype(np.uint8)
    coord = rng.integers(0, 100_000, (n, 2))
    return SynthBlock(x=x, y=y, tumour=tumour, wsi=wsi, centre=stains["centre"][wsi], coord=coord, plan=plan)


def _render_job(seed: int, split: str, k: int, n: int, stains: dict[str, np.ndarray]) -> SynthBlock:
    """Block k of a split: its own random stream, so blocks can be rendered in any process."""
    # thousands of tiny matrix products: BLAS threads only add overhead (tenfold on a busy machine)
    with threadpool_limits(limits=1, user_api="blas"):
        return render_block(stream(seed, SPLITS.index(split), k), n, stains)


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
