"""The embedded default data set: ten shape and texture classes drawn at random scale on clutter, generated from a
seed (no files, no downloads). :class:`SyntheticShapes` documents the scene; :func:`make_synthetic` builds a split.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from analysis.data.transforms import normalise

__all__ = ["SHAPE_CLASSES", "SPLITS", "SYNTHETIC_SIZE_RANGE", "SyntheticShapes", "check_split", "make_synthetic"]

SPLITS = ("train", "val", "test")
SHAPE_CLASSES: tuple[str, ...] = (
    "disk",
    "ring",
    "square",
    "frame",
    "triangle",
    "plus",
    "cross",
    "stripes_h",
    "stripes_v",
    "checker",
)
SYNTHETIC_SIZE_RANGE = (32, 299)
# Object extent as a fraction of the image side, drawn log-uniformly: small objects need the fine grids,
# large ones the coarse grids, so no single receptive field fits every sample.
OBJECT_SCALE = (0.2, 0.8)
MAX_ROTATION_DEG = 20.0  # small enough that stripes_h and stripes_v stay distinct classes
NOISE_STD = 0.08
RAMP_AMPLITUDE = 0.3
CLUTTER_STROKES = 3
COLOUR_MODE = "mod"
CONTRAST = (0.3, 0.6)
CHROMA = 0.3
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}
_CACHE_BYTES = 256 * 2**20
_RENDER_CHUNK = 512
# Per-sample draws, in this order: cx, cy, log-scale, rotation, bg rgb (3), contrast, jitter rgb (3), ramp
# amplitude, ramp angle, texture periods, then 4 numbers per clutter stroke.
_N_DRAWS = 14 + 4 * 3


def _mix64(*parts: int) -> int:
    """splitmix64 over the parts: a per-sample seed that depends on (seed, split, index) only."""
    mask = (1 << 64) - 1
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & mask)) & mask
        h = (h + 0x9E3779B97F4A7C15) & mask
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


def _check_image_size(image_size: int) -> int:
    lo, hi = SYNTHETIC_SIZE_RANGE
    if not isinstance(image_size, int) or isinstance(image_size, bool) or not lo <= image_size <= hi:
        raise ValueError(f"synthetic image_size must be an int from {lo} to {hi} pixels, got {image_size!r}")
    return image_size


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS`, else a ``ValueError`` naming them."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return split


def _coverage(sdf: torch.Tensor, pixels_per_unit: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage of a shape from its (approximate) signed distance in object units."""
    return (0.5 - sdf * pixels_per_unit).clamp(0.0, 1.0)


def _box(px: torch.Tensor, py: torch.Tensor, hx: float | torch.Tensor, hy: float | torch.Tensor) -> torch.Tensor:
    return torch.maximum(px.abs() - hx, py.abs() - hy)


def _stripes(t: torch.Tensor, periods: torch.Tensor, pixels_per_unit: torch.Tensor) -> torch.Tensor:
    # ``periods`` light bars across the object's width [-1, 1]; a soft edge about one pixel wide.
    wave = torch.sin(math.pi * periods * (t + 1.0))
    return (0.5 + wave * pixels_per_unit / (math.pi * periods)).clamp(0.0, 1.0)


def _shape_coverage(
    label: int, px: torch.Tensor, py: torch.Tensor, ppu: torch.Tensor, periods: torch.Tensor
) -> torch.Tensor:
    """Coverage in [0, 1] of class ``label`` in object coordinates (the object spans [-1, 1]^2)."""
    name = SHAPE_CLASSES[label]
    r = torch.sqrt(px * px + py * py)
    if name == "disk":
        return _coverage(r - 1.0, ppu)
    if name == "ring":
        return _coverage((r - 0.78).abs() - 0.22, ppu)
    if name == "square":
        return _coverage(_box(px, py, 0.85, 0.85), ppu)
    if name == "frame":
        return _coverage((_box(px, py, 0.85, 0.85) + 0.19).abs() - 0.19, ppu)
    if name == "triangle":
        # Equilateral, pointing up, centred vertically: the max of its three edge half-planes.
        inradius, shift = 0.55, 0.275
        edges = [(0.0, 1.0), (-math.sqrt(3) / 2, -0.5), (math.sqrt(3) / 2, -0.5)]
        d = torch.stack([nx * px + ny * (py - shift) for nx, ny in edges]).amax(0) - inradius
        return _coverage(d, ppu)
    if name == "plus":
        return _coverage(torch.minimum(_box(px, py, 0.25, 0.95), _box(px, py, 0.95, 0.25)), ppu)
    if name == "cross":
        u, v = (px + py) / math.sqrt(2), (px - py) / math.sqrt(2)
        return _coverage(torch.minimum(_box(u, v, 0.2, 1.1), _box(u, v, 1.1, 0.2)), ppu)
    inside = _coverage(_box(px, py, 0.85, 0.85), ppu)
    if name == "stripes_h":
        return inside * _stripes(py, periods, ppu)
    if name == "stripes_v":
        return inside * _stripes(px, periods, ppu)
    if name == "checker":
        checks = torch.sin(math.pi * periods * (px + 1.0)) * torch.sin(math.pi * periods * (py + 1.0))
        return inside * (0.5 + checks * ppu / (math.pi * periods)).clamp(0.0, 1.0)
    raise AssertionError(name)


def _render(labels: torch.Tensor, draws: torch.Tensor, noise: torch.Tensor, size: int) -> torch.Tensor:
    """Render a batch: ``labels`` (B,), ``draws`` (B, _N_DRAWS) uniforms in [0, 1), ``noise`` (B, 3, S, S).

    Every operation is elementwise per sample, so an image does not depend on the batch it is rendered in.
    """
    b = labels.shape[0]
    col = lambda k: draws[:, k].view(b, 1, 1)  # noqa: E731
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    u, v = u.expand(b, size, size), v.expand(b, size, size)

    lo, hi = OBJECT_SCALE
    half = 0.5 * torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * col(2))  # half extent, image units
    cx = half + (1 - 2 * half) * col(0)
    cy = half + (1 - 2 * half) * col(1)
    theta = math.radians(MAX_ROTATION_DEG) * (2 * col(3) - 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    dx, dy = u - cx, v - cy
    px, py = (cos * dx + sin * dy) / half, (-sin * dx + cos * dy) / half
    ppu = half * size  # pixels per object unit
    periods = 2.0 + torch.floor(2.0 * col(13))  # 2 or 3 bars / checks across the object

    cover = torch.empty(b, size, size)
    for label in labels.unique().tolist():
        idx = (labels == label).nonzero().squeeze(1)
        cover[idx] = _shape_coverage(label, px[idx], py[idx], ppu[idx], periods[idx])

    # Colours: any background; the object differs from it by 0.3-0.7 per channel (mod 1), so neither the
    # object's colour nor its brightness relative to the background tells the class.
    if COLOUR_MODE == "mod":
        bg = draws[:, 4:7].view(b, 3, 1, 1)
        contrast = 0.3 + 0.4 * draws[:, 7].view(b, 1, 1, 1)
        jitter = 0.2 * (draws[:, 8:11].view(b, 3, 1, 1) - 0.5)
        fg = torch.remainder(bg + contrast + jitter, 1.0)
    else:
        lo_c, hi_c = CONTRAST
        contrast = lo_c + (hi_c - lo_c) * draws[:, 7].view(b, 1, 1, 1)
        dark = (1 - contrast) * draws[:, 4].view(b, 1, 1, 1)
        light = dark + contrast
        swap = draws[:, 5].view(b, 1, 1, 1) < 0.5
        bg_level, fg_level = torch.where(swap, light, dark), torch.where(swap, dark, light)
        chroma = CHROMA * (draws[:, 8:11].view(b, 3, 1, 1) - 0.5)
        bg = (bg_level + chroma).clamp(0, 1)
        fg = (fg_level + CHROMA * (draws[:, 14:17].view(b, 3, 1, 1) - 0.5)).clamp(0, 1)
    ramp_angle = 2 * math.pi * col(12)
    ramp = RAMP_AMPLITUDE * col(11) * ((u - 0.5) * torch.cos(ramp_angle) + (v - 0.5) * torch.sin(ramp_angle))
    background = bg + ramp.unsqueeze(1)
    # Clutter: thin faint strokes (line segments through the image) that no class is defined by.
    for k in range(CLUTTER_STROKES):
        base = 14 + 4 * k
        x0, y0 = col(base), col(base + 1)
        angle = math.pi * col(base + 2)
        # Width in units of 1/32 of the image, so the scene looks the same at every resolution.
        dist = ((u - x0) * torch.sin(angle) - (v - y0) * torch.cos(angle)).abs() * 32.0
        stroke = (1.0 - dist).clamp(0.0, 1.0) * (0.25 * (2 * col(base + 3) - 1))
        background = background + stroke.unsqueeze(1)
    cover = cover.unsqueeze(1)
    image = background * (1 - cover) + fg * cover + NOISE_STD * noise
    return image.clamp(0.0, 1.0)


@contextmanager
def _one_thread() -> Iterator[None]:
    # Rendering is many elementwise ops on small tensors: on a busy machine OpenMP threads wait on each other
    # (2,000 images at 32 px: 32 s with 2 threads, 2.7 s with 1 on 2 shared cores), so render on one thread.
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


class SyntheticShapes(Dataset):
    """The embedded default data set: ten shape and texture classes drawn at random scale on clutter.

    Classes (:data:`SHAPE_CLASSES`): disk, ring, square, frame (hollow square), triangle, plus, cross (a
    diagonal plus), horizontal stripes, vertical stripes, checker (the last three are square patches of 2-3
    bars or checks). Each image has one object whose extent is 20%-80% of the image side (log-uniform), at
    a random position, rotated by at most 20 degrees, in a random colour 0.3-0.7 away (per channel, mod 1)
    from a random background, over a brightness ramp, three faint random strokes and Gaussian pixel noise
    (std 0.08). The class is the shape alone: colour, brightness and position are independent of it.

    Sample ``i`` is a pure function of ``(seed, split, i, image_size)``: its label is ``i % 10`` (so any
    prefix is balanced) and its scene comes from a generator seeded by ``(seed, split, i)``, so the same
    index shows the same scene at every image size, and train, val and test (different streams) never share
    a scene. Images are quantised to 8 bits like real photographs, then scaled to [-1, 1]; small data sets
    (under 256 MiB as uint8) are rendered once up front, larger ones (e.g. at 299 px) on each access.
    """

    num_classes = len(SHAPE_CLASSES)
    classes = list(SHAPE_CLASSES)

    def __init__(
        self,
        n: int,
        image_size: int = 32,
        *,
        seed: int = 0,
        split: str = "train",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: bool | None = None,
    ) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive number of samples, got {n!r}")
        self.n = n
        self.image_size = _check_image_size(image_size)
        self.seed = int(seed)
        self.split = check_split(split)
        self.transform = transform
        self.labels = torch.arange(n) % self.num_classes
        if cache is None:
            cache = n * 3 * image_size * image_size <= _CACHE_BYTES
        self._images: torch.Tensor | None = None
        if cache:
            self._images = torch.cat(
                [self._render_uint8(torch.arange(i, min(i + _RENDER_CHUNK, n))) for i in range(0, n, _RENDER_CHUNK)]
            )

    def __len__(self) -> int:
        return self.n

    def _render_uint8(self, indices: torch.Tensor) -> torch.Tensor:
        with _one_thread():
            return self._render_uint8_unthreaded(indices)

    def _render_uint8_unthreaded(self, indices: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        draws = torch.empty(len(indices), _N_DRAWS)
        noise = torch.empty(len(indices), 3, s, s)
        stream = _SPLIT_STREAM[self.split]
        g = torch.Generator()
        for row, i in enumerate(indices.tolist()):
            g.manual_seed(_mix64(self.seed, stream, i))
            torch.rand(_N_DRAWS, generator=g, out=draws[row])
            torch.randn(3, s, s, generator=g, out=noise[row])
        image = _render(self.labels[indices], draws, noise, s)
        return (image * 255.0).round_().to(torch.uint8)

    def images(self, indices: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Images ``indices`` (all by default) as a float batch (N, 3, S, S) in [-1, 1], before ``transform``."""
        idx = torch.arange(self.n) if indices is None else torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"indices must lie in [0, {self.n}), got min {int(idx.min())}, max {int(idx.max())}")
        if self._images is not None:
            raw = self._images[idx]
        else:
            raw = torch.cat([self._render_uint8(idx[i:i + _RENDER_CHUNK]) for i in range(0, len(idx), _RENDER_CHUNK)])
        return normalise(raw.float() / 255.0)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole set as ``(images, labels)`` tensors (no ``transform``), e.g. for a linear probe."""
        return self.images(), self.labels.clone()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} is out of range for {self.n} samples")
        index %= self.n
        x = self.images([index])[0]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])

    def __repr__(self) -> str:
        return (f"SyntheticShapes(n={self.n}, image_size={self.image_size}, seed={self.seed}, "
                f"split={self.split!r}, classes={self.num_classes})")


SYNTHETIC_DEFAULT_N = {"train": 10_000, "val": 2_000, "test": 2_000}


def make_synthetic(split: str = "train", n: int | None = None, image_size: int = 32, seed: int = 0) -> SyntheticShapes:
    """The synthetic shapes split ``split`` ("train", "val" or "test"): ``n`` samples (default 10,000 for train,
    2,000 otherwise) at ``image_size`` pixels (32 to 299). Splits are disjoint: each is its own seed stream."""
    check_split(split)
    return SyntheticShapes(SYNTHETIC_DEFAULT_N[split] if n is None else n, image_size, seed=seed, split=split)
