"""analysis.data.difficulty: the synthetic shapes' difficulty knob (Difficulty, DIFFICULTIES, specs, hue classes, label noise)."""

from __future__ import annotations

import colorsys
import hashlib
import math
from dataclasses import replace

import pytest
import torch
from scipy import stats

from analysis.data.difficulty import DIFFICULTIES, SHAPE_CLASSES, Difficulty, parse_difficulty
from analysis.data.spec import build_dataset
from analysis.data.synthetic import SyntheticShapes, make_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

# sha256 of the renders below, computed with the code of main at 13a411e (before the difficulty knob existed)
# by the same loop as `_default_digest` (then `SyntheticShapes(n, size, seed=seed, split=split, cache=cache)`, no
# difficulty argument). It came out the same under ATEN_CPU_CAPABILITY=avx512, avx2 and default (scalar
# kernels). At 299 px the scalar kernels differ from the vector ones in 2 pixels of 804,609 by one level, so
# the digest stays at sizes where every kernel agrees.
DEFAULT_DIGEST = "1f7f03fbdd431434a400c385ba424a438c3af484263dc6bec4f3c095f41dd227"
DIGEST_RENDERS = [(100, 32, 0, "train", None), (20, 64, 1, "val", None), (10, 48, 2, "test", False)]

# The presets' class counts, written out rather than read from the code: K = 10 shapes x hue bins.
PRESET_CLASSES = {"default": 10, "hard": 10, "harder": 10, "k10": 10, "k20": 20, "k50": 50, "k100": 100}


def _default_digest(**difficulty: object) -> str:
    h = hashlib.sha256()
    for n, size, seed, split, cache in DIGEST_RENDERS:
        x, y = SyntheticShapes(n, size, seed=seed, split=split, cache=cache, **difficulty).tensors()
        h.update(((x + 1) * 127.5).round().to(torch.uint8).numpy().tobytes())
        h.update(y.numpy().astype("int64").tobytes())
    return h.hexdigest()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2


def _chroma(x01: torch.Tensor) -> torch.Tensor:
    """max - min over the channels: 0 for a grey pixel (HSV's chroma)."""
    return x01.amax(1) - x01.amin(1)


# --------------------------------------------------------------------------------------------- the default
def test_default_difficulty_renders_the_original_images_bit_for_bit() -> None:
    assert _default_digest() == DEFAULT_DIGEST
    assert _default_digest(difficulty="default") == DEFAULT_DIGEST
    assert _default_digest(difficulty=Difficulty()) == DEFAULT_DIGEST


def test_default_is_the_dataclass_default_and_the_plain_spec() -> None:
    assert DIFFICULTIES["default"] == Difficulty() == parse_difficulty("") == parse_difficulty("default")
    a = build_dataset("synthetic", "val", 32, n=20, seed=4)
    b = build_dataset("shapes:default", "val", 32, n=20, seed=4)
    assert a.difficulty == b.difficulty == Difficulty() and torch.equal(a.images(), b.images())


# ------------------------------------------------------------------------------------ classes and balance
def test_every_preset_has_a_test_of_its_class_count() -> None:
    assert set(PRESET_CLASSES) <= set(DIFFICULTIES)
    assert set(DIFFICULTIES) - set(PRESET_CLASSES) == set(), "add the new preset's K to PRESET_CLASSES"


@pytest.mark.parametrize("name", list(PRESET_CLASSES))
def test_preset_class_count_names_and_balance_on_every_prefix(name: str) -> None:
    k = PRESET_CLASSES[name]
    data = make_synthetic("val", 3 * k + 7, 32, seed=1, difficulty=name)
    assert data.num_classes == k and len(data.classes) == k and len(set(data.classes)) == k
    # class c is shape c % 10 (and hue bin c // 10): its name starts with the shape's
    assert all(data.classes[c].startswith(SHAPE_CLASSES[c % 10]) for c in range(k))
    labels = data.tensors()[1]
    assert torch.equal(labels, data.true_labels)  # no label noise off the train split
    for m in range(1, len(labels) + 1):
        counts = torch.bincount(labels[:m], minlength=k)
        assert int(counts.max() - counts.min()) <= 1, (name, m)


def test_hue_bins_make_the_class_names() -> None:
    names = make_synthetic("val", 20, 32, difficulty="hues=4").classes
    assert names[0] == "disk_hue0-90" and names[19] == "checker_hue90-180" and len(names) == 40


# ---------------------------------------------------------------------------------------------- label noise
@pytest.mark.parametrize("k_spec, rate", [("default", 0.2), ("k100", 0.1)])
def test_label_noise_rate_is_binomial_and_the_new_class_uniform(k_spec: str, rate: float) -> None:
    n = 20_000
    difficulty = parse_difficulty(f"{k_spec},label_noise={rate}")
    k = difficulty.num_classes
    train = SyntheticShapes(n, 32, seed=3, split="train", difficulty=difficulty, cache=False)
    flipped = train.labels != train.true_labels
    assert torch.equal(train.true_labels, torch.arange(n) % k)
    # the count of replaced labels is Binomial(n, rate): within 4 standard deviations
    assert abs(int(flipped.sum()) - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate)), int(flipped.sum())
    # a replaced label is one of the K - 1 other classes, each as likely: a chi-square test on the offsets
    offsets = (train.labels[flipped] - train.true_labels[flipped]) % k
    assert int(offsets.min()) >= 1
    observed = torch.bincount(offsets, minlength=k)[1:].double()
    assert stats.chisquare(observed.numpy()).pvalue > 1e-3
    # the replacement does not depend on the class shown: about the same share in each half of the classes
    low = train.true_labels < k // 2
    assert abs(float(flipped[low].float().mean()) - float(flipped[~low].float().mean())) < 0.03


def test_label_noise_only_on_train_and_a_function_of_the_seed() -> None:
    spec = "label_noise=0.3"
    train = SyntheticShapes(2000, 32, seed=5, split="train", difficulty=spec, cache=False)
    again = SyntheticShapes(1000, 32, seed=5, split="train", difficulty=spec, cache=False)
    other = SyntheticShapes(2000, 32, seed=6, split="train", difficulty=spec, cache=False)
    assert torch.equal(again.labels, train.labels[:1000])  # sample i's label does not depend on n
    assert not torch.equal(other.labels, train.labels)
    for split in ("val", "test"):
        held_out = SyntheticShapes(2000, 32, seed=5, split=split, difficulty=spec, cache=False)
        assert torch.equal(held_out.labels, torch.arange(2000) % 10)
    # the images show the true class: the same pixels as without label noise
    clean = SyntheticShapes(30, 32, seed=5, split="train")
    noisy = SyntheticShapes(30, 32, seed=5, split="train", difficulty=spec)
    assert torch.equal(clean.images(), noisy.images()) and not torch.equal(clean.labels, noisy.labels)


# -------------------------------------------------------------------------------------------------- colour
def _measured_hues(difficulty: Difficulty, n: int, size: int = 64) -> tuple[torch.Tensor, list[float]]:
    """The class of each image and the HSV hue (degrees, colorsys) of the mean colour of its object region.

    The object region comes from a render of the same samples without noise, clutter or distractors (the object
    is drawn from the same draws whatever these knobs are): its pixels whose chroma is above 0.45 (covered by
    the object for at least 45%: its chroma is 0.7 x 0.7 to 1, and a blend with the grey background keeps the
    hue). The colour is then averaged over the preset's own images, noise and distractors included."""
    clean = replace(difficulty, noise_std=0.0, clutter_strokes=0, distractors=0, label_noise=0.0)
    mask = _chroma(_unit(make_synthetic("val", n, size, seed=2, difficulty=clean).images())) > 0.45
    x, y = make_synthetic("val", n, size, seed=2, difficulty=difficulty).tensors()
    x = _unit(x)
    hues = []
    for image, region in zip(x, mask):
        assert int(region.sum()) >= 10
        r, g, b = (float(image[c][region].mean()) for c in range(3))
        hues.append(360.0 * colorsys.rgb_to_hsv(r, g, b)[0])
    return y, hues


@pytest.mark.parametrize("name", ["k20", "k50", "k100"])
def test_object_hue_lies_in_its_class_bin(name: str) -> None:
    difficulty = DIFFICULTIES[name]
    width = 360 / difficulty.hues
    labels, hues = _measured_hues(difficulty, 2 * difficulty.num_classes)
    for label, hue in zip(labels.tolist(), hues):
        start = label // 10 * width
        # inside the bin, and inside its central half (where hues are drawn) up to 2 degrees of noise
        assert start <= hue < start + width, (label, hue)
        assert start + width / 4 - 2 <= hue <= start + 3 * width / 4 + 2, (label, hue)


def test_object_hue_is_independent_of_the_shape() -> None:
    """Within its bin the object's hue is drawn apart from the shape: a one-way ANOVA of the measured position
    in the bin across the 10 shapes finds no difference (and the position spans the central half)."""
    difficulty = DIFFICULTIES["k20"]
    labels, hues = _measured_hues(difficulty, 600)
    position = torch.tensor(hues) / 180 - labels // 10  # in [0, 1) across the bin
    groups = [position[labels % 10 == shape].numpy() for shape in range(10)]
    assert stats.f_oneway(*groups).pvalue > 1e-3
    assert float(position.min()) < 0.3 and float(position.max()) > 0.7


def test_hue_palette_background_is_grey_and_every_coloured_pixel_has_the_object_hue() -> None:
    """Without noise the background, ramp and strokes are grey (chroma 0), and a grey blended with the object's
    colour keeps its hue, so every clearly coloured pixel has the object's hue bin."""
    difficulty = replace(DIFFICULTIES["k20"], noise_std=0.0)
    x, y = make_synthetic("val", 40, 64, seed=3, difficulty=difficulty).tensors()
    x = _unit(x)
    chroma = _chroma(x)
    grey_share = float((chroma <= 1.5 / 255).float().mean())
    assert grey_share > 0.5  # objects cover at most (0.8)^2 of the image
    for image, label, c in zip(x, y.tolist(), chroma):
        coloured = c > 0.15
        pixels = image.permute(1, 2, 0)[coloured].tolist()
        hues = [360 * colorsys.rgb_to_hsv(*p)[0] for p in pixels]
        start = label // 10 * 180
        assert len(hues) >= 10 and all(start - 1 <= h <= start + 181 for h in hues), label
        assert bool((c[~coloured] <= 0.15).all())


def test_colour_does_not_give_the_shape_within_a_hue_bin() -> None:
    """The hue tells the bin (tested above); within a bin, nearest class mean on per-channel means and stds of
    the 10 shapes stays near chance (10%), as on the default data: the shape is still needed."""
    tx, ty = make_synthetic("train", 4000, 32, seed=0, difficulty="k20").tensors()
    vx, vy = make_synthetic("val", 2000, 32, seed=0, difficulty="k20").tensors()

    def features(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)

    for hue_bin in (0, 1):
        train, val = ty // 10 == hue_bin, vy // 10 == hue_bin
        means = torch.stack([features(tx[ty == c]).mean(0) for c in range(10 * hue_bin, 10 * hue_bin + 10)])
        predicted = torch.cdist(features(vx[val]), means).argmin(1)
        assert float((predicted == vy[val] % 10).float().mean()) < 0.2


def test_distractors_lie_under_the_object_and_change_only_the_rest() -> None:
    hard = replace(DIFFICULTIES["k20"], distractors=4)
    plain = replace(hard, distractors=0)
    a = _unit(make_synthetic("val", 30, 64, seed=1, difficulty=hard).images())
    b = _unit(make_synthetic("val", 30, 64, seed=1, difficulty=plain).images())
    clean = _chroma(_unit(make_synthetic("val", 30, 64, seed=1, difficulty=replace(plain, noise_std=0.0)).images()))
    # fully covered object pixels: in a noise-free render they have the object's colour, the image's top chroma
    opaque = (clean == clean.flatten(1).amax(1).view(-1, 1, 1)).unsqueeze(1).expand_as(a)
    assert int(opaque.sum()) > 30 * 3 * 10
    assert float((a[opaque] - b[opaque]).abs().max()) <= 1 / 255 + 1e-6
    changed = (a - b).abs().amax(1) > 0.1
    assert 0.005 < float(changed.float().mean()) < 0.2  # distractors are there, and small


# ------------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("spec", ["default", "k100", "k50,distractors=3,clutter_strokes=7,object_scale=0.15-0.5"])
def test_sample_is_a_function_of_seed_split_index_and_difficulty(spec: str) -> None:
    cached = make_synthetic("test", 24, 40, seed=7, difficulty=spec)
    lazy = SyntheticShapes(24, 40, seed=7, split="test", difficulty=spec, cache=False)
    assert torch.equal(lazy.images([19, 2]), cached.images()[[19, 2]])  # nor on the batch
    assert torch.equal(SyntheticShapes(20, 40, seed=7, split="test", difficulty=spec).images([19])[0],
                       cached.images([19])[0])  # nor on the set's size
    other_seed = make_synthetic("test", 24, 40, seed=8, difficulty=spec).images()
    other_split = make_synthetic("val", 24, 40, seed=7, difficulty=spec).images()
    for other in (other_seed, other_split):
        assert (cached.images() - other).abs().flatten(1).amax(1).min() > 0.1


def test_splits_do_not_share_distractors() -> None:
    """The extra stream (distractors, strokes beyond 3) is seeded by the split too: the pixels the distractors
    change at index i differ between train and val."""
    hard, plain = Difficulty(palette="hue", distractors=3, noise_std=0.0), Difficulty(palette="hue", noise_std=0.0)

    def changed(split: str) -> torch.Tensor:
        with_, without = (make_synthetic(split, 20, 64, seed=0, difficulty=d).images() for d in (hard, plain))
        return (with_ - without).abs().amax(1) > 0.05

    train, val = changed("train"), changed("val")
    overlap = (train & val).flatten(1).sum(1) / (train | val).flatten(1).sum(1).clamp(min=1)
    assert float(overlap.mean()) < 0.2


def test_each_knob_changes_the_images() -> None:
    base = make_synthetic("val", 12, 32, seed=0).images()
    for spec in ("object_scale=0.3-0.5", "max_rotation_deg=5", "noise_std=0.2", "clutter_strokes=6",
                 "clutter_strokes=0", "distractors=1", "palette=hue", "hues=3"):
        assert not torch.equal(make_synthetic("val", 12, 32, seed=0, difficulty=spec).images(), base), spec


# -------------------------------------------------------------------------------------------------- specs
@pytest.mark.parametrize("spec, expected", [
    ("k100", DIFFICULTIES["k100"]),
    ("hues=10", DIFFICULTIES["k100"]),  # more than one hue bin means the hue palette
    ("k100,label_noise=0.1", Difficulty(palette="hue", hues=10, label_noise=0.1)),
    ("k100, hues=1", DIFFICULTIES["k10"]),
    ("object_scale=0.1-0.5,noise_std=0.2,distractors=2", Difficulty(object_scale=(0.1, 0.5), noise_std=0.2,
                                                                     distractors=2)),
])
def test_spec_strings(spec: str, expected: Difficulty) -> None:
    difficulty = parse_difficulty(spec)
    assert difficulty == expected
    assert parse_difficulty(difficulty.spec) == difficulty
    assert build_dataset(f"synthetic:{spec}", "val", n=10).num_classes == expected.num_classes


def test_every_preset_spec_is_its_name() -> None:
    for name, difficulty in DIFFICULTIES.items():
        assert difficulty.spec == name and parse_difficulty(name) == difficulty


@pytest.mark.parametrize("knobs, message", [
    (dict(palette="rainbow"), r"palette must be 'any' or 'hue'"),
    (dict(hues=0), r"hues must be an int from 1 to 36"),
    (dict(hues=37), r"hues must be an int from 1 to 36"),
    (dict(hues=2.0), r"hues must be an int"),
    (dict(palette="any", hues=2), r"hues must be 1 with palette='any'"),
    (dict(object_scale=(0.05, 0.5)), r"object_scale must be \(min, max\) with 0.1 <= min <= max <= 1"),
    (dict(object_scale=(0.6, 0.5)), r"object_scale must be"),
    (dict(object_scale=0.5), r"object_scale must be"),
    (dict(max_rotation_deg=22.5), r"max_rotation_deg must be a number of degrees in \[0, 22.5\)"),
    (dict(max_rotation_deg=-1), r"max_rotation_deg"),
    (dict(noise_std=0.6), r"noise_std must be in \[0, 0.5\]"),
    (dict(noise_std=float("nan")), r"noise_std"),
    (dict(clutter_strokes=17), r"clutter_strokes must be an int from 0 to 16"),
    (dict(distractors=-1), r"distractors must be an int from 0 to 8"),
    (dict(distractors=True), r"distractors must be an int"),
    (dict(label_noise=0.51), r"label_noise must be in \[0, 0.5\]"),
])
def test_bad_knobs_name_the_knob_and_its_range(knobs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Difficulty(**knobs)


@pytest.mark.parametrize("spec, message", [
    ("hard,k20", r"expected a preset \(default, .*\) first, then knob=value pairs; got 'k20'"),
    ("nightmare", r"expected a preset"),
    ("/data", r"expected a preset"),
    ("colour=red", r"unknown knob 'colour'; knobs: palette, hues"),
    ("hues=ten", r"hues='ten' is not a valid hues \(e.g. hues=3\)"),
    ("object_scale=0.3", r"object_scale='0.3' is not a valid object_scale \(e.g. object_scale=0.1-0.5\)"),
    ("label_noise=0.9", r"label_noise must be in \[0, 0.5\]"),
])
def test_bad_specs_raise_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_dataset(f"synthetic:{spec}", "val", n=10)
    with pytest.raises(ValueError, match="synthetic difficulty must be a Difficulty or a spec"):
        make_synthetic("val", 10, difficulty=3)  # type: ignore[arg-type]
