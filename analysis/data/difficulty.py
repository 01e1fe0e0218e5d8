"""How hard the synthetic shapes are: :class:`Difficulty`, its named presets (:data:`DIFFICULTIES`), the spec
string that picks one on the command line (``--data synthetic:hard``, ``synthetic:k100,label_noise=0.1``,
:func:`parse_difficulty`) and the class names it implies.

The knobs: more classes (``hues``: ten shapes times hue bins), object scale, rotation, pixel noise, clutter
strokes, distractor shapes and training label noise. ``Difficulty()`` is the original data set, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["DIFFICULTIES", "PALETTES", "SHAPE_CLASSES", "Difficulty", "class_names", "parse_difficulty"]

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
PALETTES = ("any", "hue")
# Uniform draws per distractor in the extra stream (shape offset, cx, cy, scale, rotation, periods, opacity and 4
# colour numbers), and the clutter strokes the base stream draws itself (the rest come from the extra stream).
DISTRACTOR_DRAWS = 11
BASE_STROKES = 3


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, knob: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"synthetic difficulty: {knob} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class Difficulty:
    """The knobs of :class:`SyntheticShapes`. The defaults are the original data set, rendered bit for bit.

    - ``palette``: ``"any"``: a background of any colour and an object 0.3-0.7 away from it per channel (mod 1),
      so colour and brightness say nothing about the class; ``"hue"``: a grey background (its ramp and strokes
      grey too, so it carries no hue) and an object of HSV saturation 0.7-1 and value 0.7-1 (chroma >= 0.49)
      whose hue lies in the central half of its class's hue bin. ``None`` (the default) means "any" with one
      hue bin and "hue" with more.
    - ``hues``: hue bins, 1 to 36 (more than 1 needs the "hue" palette). Class ``c`` is shape ``c % 10`` in hue
      bin ``c // 10``, bin ``b`` spanning ``[b, b + 1) * 360 / hues`` degrees: ``10 * hues`` classes, and the
      hue, drawn apart from the shape, tells only which ten classes an image may be. One bin is the circle.
    - ``object_scale``: (min, max) of the object's extent as a fraction of the image side, drawn log-uniformly,
      0.1 <= min <= max <= 1: small objects need the fine grids, large ones the coarse grids.
    - ``max_rotation_deg``: the object's rotation is uniform in +-this, in [0, 22.5) degrees: at 22.5 a rotated
      plus and a rotated cross (and at 45 the two stripe directions) can be the same picture.
    - ``noise_std``: std of the Gaussian pixel noise per channel, in [0, 0.5] (pixels span [0, 1]).
    - ``clutter_strokes``: faint grey line segments across the image that no class is defined by, 0 to 16.
    - ``distractors``: 0 to 8 extra shapes, each of a shape other than the object's, 0.3-0.6 times its extent,
      anywhere in the image, blended at opacity 0.3-0.6 under the object in a colour drawn as an object's of the
      palette (any hue in the "hue" palette), so the object is always the largest and most opaque shape.
    - ``label_noise``: the share of *training* labels replaced by another class drawn uniformly, in [0, 0.5];
      the images still show their class, and validation and test labels are never replaced.
    """

    palette: str | None = None
    hues: int = 1
    object_scale: tuple[float, float] = (0.2, 0.8)
    max_rotation_deg: float = 20.0
    noise_std: float = 0.08
    clutter_strokes: int = 3
    distractors: int = 0
    label_noise: float = 0.0

    def __post_init__(self) -> None:
        if self.palette is None:
            object.__setattr__(self, "palette", "any" if self.hues == 1 else "hue")
        _require(self.palette in PALETTES, "palette", " or ".join(map(repr, PALETTES)), self.palette)
        _require(_is_int(self.hues) and 1 <= self.hues <= 36, "hues", "an int from 1 to 36", self.hues)
        _require(self.hues == 1 or self.palette == "hue", "hues", "1 with palette='any' (hue bins need palette='hue')",
                 self.hues)
        scale = self.object_scale
        _require(isinstance(scale, (tuple, list)) and len(scale) == 2 and all(map(_is_number, scale))
                 and 0.1 <= scale[0] <= scale[1] <= 1.0, "object_scale", "(min, max) with 0.1 <= min <= max <= 1",
                 scale)
        object.__setattr__(self, "object_scale", (float(scale[0]), float(scale[1])))
        _require(_is_number(self.max_rotation_deg) and 0 <= self.max_rotation_deg < 22.5, "max_rotation_deg",
                 "a number of degrees in [0, 22.5)", self.max_rotation_deg)
        _require(_is_number(self.noise_std) and 0 <= self.noise_std <= 0.5, "noise_std", "in [0, 0.5]",
                 self.noise_std)
        _require(_is_int(self.clutter_strokes) and 0 <= self.clutter_strokes <= 16, "clutter_strokes",
                 "an int from 0 to 16", self.clutter_strokes)
        _require(_is_int(self.distractors) and 0 <= self.distractors <= 8, "distractors", "an int from 0 to 8",
                 self.distractors)
        _require(_is_number(self.label_noise) and 0 <= self.label_noise <= 0.5, "label_noise", "in [0, 0.5]",
                 self.label_noise)

    @property
    def num_classes(self) -> int:
        return len(SHAPE_CLASSES) * self.hues

    @property
    def extra_draws(self) -> int:
        """Uniforms per sample from the extra stream: distractors, and clutter strokes beyond the base ones."""
        return DISTRACTOR_DRAWS * self.distractors + 4 * max(0, self.clutter_strokes - BASE_STROKES)

    @property
    def spec(self) -> str:
        """The shortest ``--data synthetic:SPEC`` tail that gives this difficulty: a preset name, or the knobs
        that differ from the default."""
        for name, preset in DIFFICULTIES.items():
            if preset == self:
                return name
        default = replace(Difficulty(), palette=Difficulty(hues=self.hues).palette)  # the palette hues imply
        return ",".join(f"{f.name}={_format_knob(getattr(self, f.name))}" for f in fields(self)
                        if getattr(self, f.name) != getattr(default, f.name))


DIFFICULTIES: dict[str, Difficulty] = {
    # Final validation accuracy of small_inception (32 px, batch 64, SGD + cosine, seed 0; CPU seconds on one
    # thread) from benchmarks/learnability.py --ladder; the same seed varies by a few points from run to run.
    # The original task: ten shapes, colour free of the class. 94% at width 0.25 x 300 steps (47 s), 97% at 0.5.
    "default": Difficulty(),
    # Four distractors, ten strokes, more noise: 79-80% (seeds 0, 1) at width 0.25 x 300 steps (46 s), 90% at 0.5,
    # 94% at 0.25 x 600. Noise is the steep knob: at noise_std 0.15 the same net stayed near chance (13%).
    "hard": Difficulty(noise_std=0.12, clutter_strokes=10, distractors=4),
    # "hard" with objects down to 15% of the side: 36% at width 0.25 x 300 steps, 80% at 0.5 x 300 (109 s), 87%
    # at 0.25 x 600 (88 s): the 70-90% level for budgets twice "hard"'s.
    "harder": Difficulty(object_scale=(0.15, 0.8), noise_std=0.12, clutter_strokes=10, distractors=4),
    # The class count ladder (label smoothing needs K >= 100): the default scene in the "hue" palette, K = 10 x
    # hues. At width 0.25 x 300 steps: k10 98%, k20 77-88%, k50 40-42%, k100 19% (chance 1%; the colour probe
    # 8%). k100 at width 0.25: 51% after 600 steps (85 s), 74% after 800 (117 s), 93% after 1000 (137 s).
    "k10": Difficulty(palette="hue"),
    "k20": Difficulty(palette="hue", hues=2),
    "k50": Difficulty(palette="hue", hues=5),
    "k100": Difficulty(palette="hue", hues=10),
}


def _format_knob(value: Any) -> str:
    if isinstance(value, tuple):
        return "-".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _parse_knob(name: str, text: str) -> Any:
    kinds = {f.name: f.type for f in fields(Difficulty)}
    if name not in kinds:
        raise ValueError(f"synthetic difficulty: unknown knob {name!r}; knobs: {', '.join(kinds)}")
    kind = kinds[name]
    try:
        if name == "object_scale":
            lo, sep, hi = text.partition("-")
            if not sep:
                raise ValueError
            return (float(lo), float(hi))
        return int(text) if kind == "int" else float(text) if kind == "float" else text
    except ValueError:
        example = "0.1-0.5" if name == "object_scale" else {"int": "3", "float": "0.1"}.get(kind, "hue")
        message = f"synthetic difficulty: {name}={text!r} is not a valid {name} (e.g. {name}={example})"
        raise ValueError(message) from None


def parse_difficulty(spec: str | Difficulty) -> Difficulty:
    """A :class:`Difficulty` from a preset name (``"hard"``), knobs (``"hues=10,label_noise=0.1"``) or a preset
    then knobs that override it (``"k100,label_noise=0.1"``); ``object_scale`` is written ``min-max``."""
    if isinstance(spec, Difficulty):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"synthetic difficulty must be a Difficulty or a spec string, got {spec!r}")
    tokens = [t.strip() for t in spec.split(",")] if spec.strip() else []
    base, knobs = DIFFICULTIES["default"], {}
    for position, token in enumerate(tokens):
        name, eq, value = (part.strip() for part in token.partition("="))
        if eq:
            knobs[name] = _parse_knob(name, value)
        elif position == 0 and name in DIFFICULTIES:
            base = DIFFICULTIES[name]
        else:
            raise ValueError(f"synthetic difficulty {spec!r}: expected a preset ({', '.join(DIFFICULTIES)}) first, "
                             f"then knob=value pairs; got {token!r}")
    if knobs.get("hues", 1) > 1 and "palette" not in knobs:
        knobs["palette"] = "hue"  # "hues=10" means hue classes, whatever the preset's palette was
    return replace(base, **knobs)


def class_names(difficulty: Difficulty) -> list[str]:
    """Class ``c``'s name: its shape, and with several hue bins the bin in degrees (``disk_hue0-36``)."""
    if difficulty.hues == 1:
        return list(SHAPE_CLASSES)
    width = 360 / difficulty.hues
    return [f"{SHAPE_CLASSES[c % 10]}_hue{c // 10 * width:.0f}-{(c // 10 + 1) * width:.0f}"
            for c in range(difficulty.num_classes)]


# -------------------------------------------------------------------------------------------- the geometry
