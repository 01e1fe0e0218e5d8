"""The embedded default data set: ten shape and texture classes (more with hue bins) drawn at random scale on
clutter, generated from a seed (no files, no downloads). :class:`SyntheticShapes` documents the scene,
:class:`~analysis.data.difficulty.Difficulty` its knobs; :func:`make_synthetic` builds a split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from contextlib import contextmanager
from dataclasses import fields
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from analysis.data.difficulty import (
    BASE_STROKES,
    DISTRACTOR_DRAWS,
    SHAPE_CLASSES,
    Difficulty,
    class_names,
    parse_difficulty,
)
from analysis.data.tensors import ImageTensors
from analysis.data.transforms import normalise
from analysis.io import atomic_path

__all__ = ["SPLITS", "SYNTHETIC_SIZE_RANGE", "SyntheticShapes", "check_split", "make_synthetic", "store_key"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SYNTHETIC_SIZE_RANGE = (32, 299)
RAMP_AMPLITUDE = 0.3
# The "hue" palette: saturation and value of the object's colour, and the share of its hue bin left unused on
# each side (a quarter: hues come from the bin's central half, so neighbouring classes never meet in hue).
HUE_SATURATION = (0.7, 1.0)
HUE_VALUE = (0.7, 1.0)
HUE_MARGIN = 0.25
# Distractors: extent relative to the object's (so the object is always the largest shape), and opacity.
DISTRACTOR_SCALE = (0.3, 0.6)
DISTRACTOR_OPACITY = (0.3, 0.6)
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}
_CACHE_BYTES = 256 * 2**20
_RENDER_CHUNK = 512
# Per-sample draws of the base stream, in this order: cx, cy, log-scale, rotation, bg rgb (3), contrast, jitter
# rgb (3), ramp amplitude, ramp angle, texture periods, then 4 numbers per clutter stroke (the first 3 strokes);
# the pixel noise follows in the same stream. The "hue" palette reads bg r as the grey level and jitter rgb as
# the object's hue (within its bin), saturation and value.
_N_DRAWS = 14 + 4 * 3
# The extra stream (only for difficulties that need it): per distractor, DISTRACTOR_DRAWS uniforms; then 4
# numbers per clutter stroke beyond the first BASE_STROKES.
_EXTRA_STREAM = 1
_LABEL_NOISE_STREAM = 2


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
    """Coverage in [0, 1] of shape ``label`` in object coordinates (the object spans [-1, 1]^2)."""
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


def _half_extent(draw: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """Half the object's extent in image units, its extent log-uniform in ``scale``."""
    lo, hi = scale
    return 0.5 * torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * draw)


def _place_shapes(shapes: torch.Tensor, half: torch.Tensor, pose: torch.Tensor, max_rotation_deg: float,
                  u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Coverage (B, S, S) of one shape per image: half extent ``half`` (B, 1, 1), ``pose`` (B, 4) uniforms for
    the centre x and y (the shape stays inside the image), the rotation and the texture periods."""
    b, size = shapes.shape[0], u.shape[-1]
    col = lambda k: pose[:, k].view(b, 1, 1)  # noqa: E731
    cx = half + (1 - 2 * half) * col(0)
    cy = half + (1 - 2 * half) * col(1)
    theta = math.radians(max_rotation_deg) * (2 * col(2) - 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    dx, dy = u - cx, v - cy
    px, py = (cos * dx + sin * dy) / half, (-sin * dx + cos * dy) / half
    ppu = half * size  # pixels per object unit
    periods = 2.0 + torch.floor(2.0 * col(3))  # 2 or 3 bars / checks across the object
    cover = torch.empty(b, size, size)
    for label in shapes.unique().tolist():
        idx = (shapes == label).nonzero().squeeze(1)
        cover[idx] = _shape_coverage(label, px[idx], py[idx], ppu[idx], periods[idx])
    return cover


# --------------------------------------------------------------------------------------------- the colours
def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(B,) HSV (hue in turns) to (B, 3, 1, 1) RGB: channel n is V - V S clamp(min(k, 4 - k), 0, 1) with
    k = (n + 6 hue) mod 6 for n = 5, 3, 1 (red, green, blue)."""
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0]) + 6 * hue[:, None], 6)
    ramp = torch.minimum(k, 4 - k).clamp(0.0, 1.0)
    rgb = value[:, None] - value[:, None] * saturation[:, None] * ramp
    return rgb.view(-1, 3, 1, 1)


def _hue_colour(hue: torch.Tensor, saturation_draw: torch.Tensor, value_draw: torch.Tensor) -> torch.Tensor:
    (s_lo, s_hi), (v_lo, v_hi) = HUE_SATURATION, HUE_VALUE
    return _hsv_to_rgb(hue, s_lo + (s_hi - s_lo) * saturation_draw, v_lo + (v_hi - v_lo) * value_draw)


def _offset_colour(bg: torch.Tensor, contrast_draw: torch.Tensor, jitter_draws: torch.Tensor) -> torch.Tensor:
    """The "any" palette: a colour 0.3-0.7 away from ``bg`` (B, 3, 1, 1) per channel, mod 1, so that neither
    the colour nor the brightness relative to the background tells the class."""
    b = bg.shape[0]
    contrast = 0.3 + 0.4 * contrast_draw.view(b, 1, 1, 1)
    jitter = 0.2 * (jitter_draws.view(b, 3, 1, 1) - 0.5)
    return torch.remainder(bg + contrast + jitter, 1.0)


def _scene_colours(classes: torch.Tensor, draws: torch.Tensor,
                   difficulty: Difficulty) -> tuple[torch.Tensor, torch.Tensor]:
    """The background's base colour and the object's colour, each (B, 3, 1, 1)."""
    b = classes.shape[0]
    if difficulty.palette == "any":
        bg = draws[:, 4:7].view(b, 3, 1, 1)
        return bg, _offset_colour(bg, draws[:, 7], draws[:, 8:11])
    bg = draws[:, 4].view(b, 1, 1, 1).expand(b, 3, 1, 1)
    margin = HUE_MARGIN if difficulty.hues > 1 else 0.0
    hue_bin = torch.div(classes, len(SHAPE_CLASSES), rounding_mode="floor")
    hue = (hue_bin + margin + (1 - 2 * margin) * draws[:, 8]) / difficulty.hues
    return bg, _hue_colour(hue, draws[:, 9], draws[:, 10])


# ----------------------------------------------------------------------------------------------- the scene
def _stroke(stroke_draws: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A thin faint grey line through the image (B, S, S) from 4 uniforms per image: a point, an angle, a strength."""
    b = stroke_draws.shape[0]
    x0, y0, angle_draw, strength = (stroke_draws[:, k].view(b, 1, 1) for k in range(4))
    angle = math.pi * angle_draw
    # Width in units of 1/32 of the image, so the scene looks the same at every resolution.
    dist = ((u - x0) * torch.sin(angle) - (v - y0) * torch.cos(angle)).abs() * 32.0
    return (1.0 - dist).clamp(0.0, 1.0) * (0.25 * (2 * strength - 1))


def _stroke_draws(draws: torch.Tensor, extra: torch.Tensor, difficulty: Difficulty) -> list[torch.Tensor]:
    """The 4 uniforms of each clutter stroke: the first 3 from the base stream, the others from the extra one."""
    base = [draws[:, 14 + 4 * k:18 + 4 * k] for k in range(min(difficulty.clutter_strokes, BASE_STROKES))]
    start = DISTRACTOR_DRAWS * difficulty.distractors
    more = [extra[:, start + 4 * k:start + 4 * k + 4] for k in range(difficulty.clutter_strokes - len(base))]
    return base + more


def _background(bg: torch.Tensor, draws: torch.Tensor, extra: torch.Tensor, difficulty: Difficulty,
                u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The base colour over a brightness ramp and the clutter strokes (all grey), (B, 3, S, S)."""
    b = bg.shape[0]
    ramp_angle = 2 * math.pi * draws[:, 12].view(b, 1, 1)
    ramp = RAMP_AMPLITUDE * draws[:, 11].view(b, 1, 1) * (
        (u - 0.5) * torch.cos(ramp_angle) + (v - 0.5) * torch.sin(ramp_angle))
    background = bg + ramp.unsqueeze(1)
    for stroke_draws in _stroke_draws(draws, extra, difficulty):
        background = background + _stroke(stroke_draws, u, v).unsqueeze(1)
    return background


def _add_distractors(background: torch.Tensor, shapes: torch.Tensor, half: torch.Tensor, draws: torch.Tensor,
                     extra: torch.Tensor, difficulty: Difficulty, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Blend each distractor onto the background: a shape other than the object's, smaller and fainter."""
    b = shapes.shape[0]
    for k in range(difficulty.distractors):
        d = extra[:, DISTRACTOR_DRAWS * k:DISTRACTOR_DRAWS * (k + 1)]
        others = (shapes + 1 + torch.floor((len(SHAPE_CLASSES) - 1) * d[:, 0]).long()) % len(SHAPE_CLASSES)
        (s_lo, s_hi), (o_lo, o_hi) = DISTRACTOR_SCALE, DISTRACTOR_OPACITY
        cover = _place_shapes(others, half * (s_lo + (s_hi - s_lo) * d[:, 1].view(b, 1, 1)), d[:, 2:6],
                              difficulty.max_rotation_deg, u, v)
        if difficulty.palette == "any":
            colour = _offset_colour(draws[:, 4:7].view(b, 3, 1, 1), d[:, 7], d[:, 8:11])
        else:
            colour = _hue_colour(d[:, 7], d[:, 8], d[:, 9])
        alpha = (cover * (o_lo + (o_hi - o_lo) * d[:, 6].view(b, 1, 1))).unsqueeze(1)
        background = background * (1 - alpha) + colour * alpha
    return background


def _render(classes: torch.Tensor, draws: torch.Tensor, extra: torch.Tensor, noise: torch.Tensor, size: int,
            difficulty: Difficulty) -> torch.Tensor:
    """Render a batch in [0, 1]: ``classes`` (B,), ``draws`` (B, _N_DRAWS) and ``extra`` (B, extra_draws)
    uniforms in [0, 1), ``noise`` (B, 3, S, S) standard normal.

    Every operation is elementwise per sample, so an image does not depend on the batch it is rendered in.
    """
    b = classes.shape[0]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    u, v = u.expand(b, size, size), v.expand(b, size, size)
    shapes = classes % len(SHAPE_CLASSES)
    half = _half_extent(draws[:, 2].view(b, 1, 1), difficulty.object_scale)
    cover = _place_shapes(shapes, half, draws[:, [0, 1, 3, 13]], difficulty.max_rotation_deg, u, v).unsqueeze(1)
    bg, fg = _scene_colours(classes, draws, difficulty)
    background = _background(bg, draws, extra, difficulty, u, v)
    background = _add_distractors(background, shapes, half, draws, extra, difficulty, u, v)
    image = background * (1 - cover) + fg * cover + difficulty.noise_std * noise
    return image.clamp(0.0, 1.0)


def _training_labels(classes: torch.Tensor, seed: int, difficulty: Difficulty) -> torch.Tensor:
    """The training labels: class ``c`` of sample ``i`` is kept, or with probability ``label_noise`` replaced by
    one of the other ``K - 1`` classes drawn uniformly; both draws are hashes of ``(seed, i)``."""
    if difficulty.label_noise == 0:
        return classes.clone()
    k, stream = difficulty.num_classes, _SPLIT_STREAM["train"]
    unit = lambda *parts: _mix64(seed, stream, *parts) / 2.0**63  # noqa: E731
    labels = classes.clone()
    for i in range(len(classes)):
        if unit(i, _LABEL_NOISE_STREAM, 0) < difficulty.label_noise:
            labels[i] = (classes[i] + 1 + int((k - 1) * unit(i, _LABEL_NOISE_STREAM, 1))) % k
    return labels


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


@lru_cache(maxsize=1)
def _renderer_digest() -> str:
    """A digest of the renderer's code (this module and the difficulty's): a change to either renders anew."""
    from analysis.data import difficulty

    sha = hashlib.sha256()
    for module_file in (__file__, difficulty.__file__):
        sha.update(Path(module_file).read_bytes())
    return sha.hexdigest()[:16]


def store_key(n: int, image_size: int, seed: int, split: str, difficulty: str | Difficulty = "default") -> str:
    """The file name under which a disk store keeps a split's rendered pixels: every parameter that changes the
    images (``n``, ``image_size``, ``seed``, ``split``, the difficulty's knobs but its training label noise,
    which changes labels only), the renderer's code and torch's version (its generators draw the scenes)."""
    diff = parse_difficulty(difficulty)
    knobs = {f.name: getattr(diff, f.name) for f in fields(diff) if f.name != "label_noise"}
    ident = dict(n=int(n), image_size=int(image_size), seed=int(seed), split=check_split(split), difficulty=knobs,
                 renderer=_renderer_digest(), torch=torch.__version__.split("+")[0])
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=list).encode()).hexdigest()[:20]
    return f"synthetic-{split}-{n}x{image_size}px-{digest}.pt"


class SyntheticShapes(Dataset):
    """The embedded default data set: ten shapes and textures drawn at random scale on clutter, with a
    difficulty knob (:class:`Difficulty`, or a preset name of :data:`DIFFICULTIES`).

    Shapes (:data:`SHAPE_CLASSES`): disk, ring, square, frame (hollow square), triangle, plus, cross (a
    diagonal plus), horizontal stripes, vertical stripes, checker (the last three are square patches of 2-3
    bars or checks). Each image has one object whose extent is 20%-80% of the image side (log-uniform), at
    a random position, rotated by at most 20 degrees, in a random colour 0.3-0.7 away (per channel, mod 1)
    from a random background, over a brightness ramp, three faint random strokes and Gaussian pixel noise
    (std 0.08). The class is the shape alone: colour, brightness and position are independent of it. These
    are the ``"default"`` difficulty's numbers; the other difficulties change them as :class:`Difficulty`
    says: with the ``"hue"`` palette the background, ramp and strokes are grey and the object saturated, and
    with ``hues`` bins class ``c`` is shape ``c % 10`` in hue bin ``c // 10`` (:func:`class_names`).

    Sample ``i`` is a pure function of ``(seed, split, i, image_size, difficulty)``: the class it shows is
    ``i % K`` (so any prefix is balanced; ``true_labels``) and its scene comes from generators seeded by
    ``(seed, split, i)``, so the same index shows the same scene at every image size, and train, val and test
    (different streams) never share a scene. Knobs reuse the same draws, so a sample keeps its position,
    scale, background and noise pattern across difficulties wherever the knobs allow. ``labels`` are the
    classes shown, except on the train split with ``label_noise``, where that share of them is replaced by
    another class. Images are quantised to 8 bits like real photographs, then scaled to [-1, 1]; small data
    sets (under 256 MiB as uint8) are rendered once up front, larger ones (e.g. at 299 px) on each access.

    ``store``, a folder, keeps the rendered 8-bit pixels on disk (:func:`store_key` names the file): the set is
    rendered once, whatever its size, and later builds, in any process, read it back (memory-mapped) instead of
    rendering again, so the points of a sweep share one rendering.
    """

    def __init__(
        self,
        n: int,
        image_size: int = 32,
        *,
        seed: int = 0,
        split: str = "train",
        difficulty: str | Difficulty = "default",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: bool | None = None,
        store: str | Path | None = None,
    ) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive number of samples, got {n!r}")
        self.n = n
        self.image_size = _check_image_size(image_size)
        self.seed = int(seed)
        self.split = check_split(split)
        self.difficulty = parse_difficulty(difficulty)
        self.num_classes = self.difficulty.num_classes
        self.classes = class_names(self.difficulty)
        self.transform = transform
        self.true_labels = torch.arange(n) % self.num_classes
        train = split == "train"
        self.labels = _training_labels(self.true_labels, self.seed, self.difficulty) if train else self.true_labels
        if cache is None:
            cache = n * 3 * image_size * image_size <= _CACHE_BYTES
        self._images: torch.Tensor | None = None
        if store is not None:
            self._images = self._stored(Path(store))
        elif cache:
            self._images = self._render_all()

    def _render_all(self) -> torch.Tensor:
        return torch.cat([self._render_uint8(torch.arange(i, min(i + _RENDER_CHUNK, self.n)))
                          for i in range(0, self.n, _RENDER_CHUNK)])

    def _stored(self, folder: Path) -> torch.Tensor:
        """The set's pixels from the disk store, rendered and written there (atomically) when absent or unreadable."""
        path = folder / store_key(self.n, self.image_size, self.seed, self.split, self.difficulty)
        shape = (self.n, 3, self.image_size, self.image_size)
        if path.exists():
            try:
                images = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
                if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and tuple(images.shape) == shape:
                    return images
                log.warning("%s does not hold this set's pixels: rendering it again", path)
            except Exception as err:  # a truncated or foreign file: render again and replace it
                log.warning("cannot read %s (%s): rendering it again", path, type(err).__name__)
        images = self._render_all()
        with atomic_path(path) as tmp:
            torch.save(images, tmp)
        return images

    def __len__(self) -> int:
        return self.n

    def _render_uint8(self, indices: torch.Tensor) -> torch.Tensor:
        with _one_thread():
            return self._render_uint8_unthreaded(indices)

    def _render_uint8_unthreaded(self, indices: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        draws = torch.empty(len(indices), _N_DRAWS)
        extra = torch.empty(len(indices), self.difficulty.extra_draws)
        noise = torch.empty(len(indices), 3, s, s)
        stream = _SPLIT_STREAM[self.split]
        g = torch.Generator()
        for row, i in enumerate(indices.tolist()):
            g.manual_seed(_mix64(self.seed, stream, i))
            torch.rand(_N_DRAWS, generator=g, out=draws[row])
            torch.randn(3, s, s, generator=g, out=noise[row])
            if extra.shape[1]:
                g.manual_seed(_mix64(self.seed, stream, i, _EXTRA_STREAM))
                torch.rand(extra.shape[1], generator=g, out=extra[row])
        image = _render(self.true_labels[indices], draws, extra, noise, s, self.difficulty)
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

    def image_tensors(self) -> ImageTensors | None:
        """The whole set as :class:`ImageTensors` (8-bit pixels, scaled per batch where they live) when its pixels
        are held (rendered up front or from ``store``) and it has no ``transform``; otherwise None."""
        if self._images is None or self.transform is not None:
            return None
        return ImageTensors(self._images, self.labels, self.classes)

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
                f"split={self.split!r}, difficulty={self.difficulty.spec!r}, classes={self.num_classes})")


SYNTHETIC_DEFAULT_N = {"train": 10_000, "val": 2_000, "test": 2_000}


def make_synthetic(split: str = "train", n: int | None = None, image_size: int = 32, seed: int = 0,
                   difficulty: str | Difficulty = "default", store: str | Path | None = None) -> SyntheticShapes:
    """The synthetic shapes split ``split`` ("train", "val" or "test"): ``n`` samples (default 10,000 for train,
    2,000 otherwise) at ``image_size`` pixels (32 to 299) and ``difficulty`` (a :class:`Difficulty`, a preset
    name or a spec, :func:`parse_difficulty`). Splits are disjoint: each is its own seed stream. ``store``: a
    folder that keeps the rendered pixels on disk for the next build (:class:`SyntheticShapes`)."""
    check_split(split)
    return SyntheticShapes(SYNTHETIC_DEFAULT_N[split] if n is None else n, image_size, seed=seed, split=split,
                           difficulty=difficulty, store=store)
