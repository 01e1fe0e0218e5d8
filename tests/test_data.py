"""analysis.data: the synthetic shapes, CIFAR-10 and ImageFolder from local files, transforms, specs, data order."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from analysis import TrainConfig, Trainer
from analysis.data.cifar10 import load_cifar10
from analysis.data.imagefolder import load_image_folder
from analysis.data.spec import build_dataset
from analysis.data.synthetic import SHAPE_CLASSES, SyntheticShapes, make_synthetic
from analysis.data.transforms import inception_eval_transform, inception_train_transform
from analysis.training.sampling import DataSource, EpochSampler, epoch_order, make_loader


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ synthetic shapes
def test_same_seed_same_tensors_other_seed_differs() -> None:
    a = make_synthetic("train", 60, 32, seed=3).tensors()
    b = make_synthetic("train", 60, 32, seed=3).tensors()
    c = make_synthetic("train", 60, 32, seed=4).tensors()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[1], c[1])  # labels are i % 10 ...
    assert (a[0] - c[0]).abs().flatten(1).amax(1).min() > 0.1  # ... but every scene differs


def test_sample_is_a_function_of_its_index_only() -> None:
    cached = make_synthetic("val", 40, 48, seed=1)
    lazy = SyntheticShapes(40, 48, seed=1, split="val", cache=False)
    batch = cached.images()
    assert torch.equal(lazy.images([7, 3]), batch[[7, 3]])  # rendering does not depend on the batch
    x, y = lazy[13]
    assert torch.equal(x, batch[13]) and y == 3
    assert torch.equal(SyntheticShapes(14, 48, seed=1, split="val")[13][0], x)  # nor on the set's size
    assert x.dtype == torch.float32 and x.shape == (3, 48, 48)
    # 8-bit images scaled to [-1, 1]: every value is k/255 mapped by (v - 0.5) / 0.5
    levels = (batch + 1) / 2 * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert float(batch.min()) >= -1 and float(batch.max()) <= 1


def test_splits_are_disjoint() -> None:
    train = make_synthetic("train", 200, 32, seed=0).images().flatten(1)
    val = make_synthetic("val", 200, 32, seed=0).images().flatten(1)
    assert torch.cdist(train, val).min() > 1.0


@pytest.mark.parametrize("size", [32, 299])
def test_sizes_at_both_ends(size: int) -> None:
    data = SyntheticShapes(10, size, seed=0, cache=False)
    x, y = data[9]
    assert x.shape == (3, size, size) and y == 9
    assert float(x.std()) > 0.05


@pytest.mark.parametrize("size", [31, 300, 0])
def test_sizes_outside_the_range_raise(size: int) -> None:
    with pytest.raises(ValueError, match="from 32 to 299"):
        make_synthetic("train", 10, size)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="split"):
        make_synthetic("dev", 10)
    with pytest.raises(ValueError, match="positive"):
        SyntheticShapes(0)
    with pytest.raises(IndexError):
        SyntheticShapes(5)[5]


def test_class_balance_and_labels() -> None:
    data = make_synthetic("train", 1000, 32, seed=0)
    _, labels = data.tensors()
    assert data.num_classes == 10 and data.classes == list(SHAPE_CLASSES)
    assert labels.min() == 0 and labels.max() == 9
    assert torch.bincount(labels).tolist() == [100] * 10
    assert torch.bincount(labels[:95], minlength=10).tolist() == [10] * 5 + [9] * 5  # any prefix is balanced


def test_colour_and_brightness_do_not_give_the_class() -> None:
    """Nearest class mean on per-channel means and stds of 2,000 images stays near chance (10%)."""
    tx, ty = make_synthetic("train", 2000, 32, seed=0).tensors()
    vx, vy = make_synthetic("val", 1000, 32, seed=0).tensors()

    def stats(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)

    means = torch.stack([stats(tx)[ty == c].mean(0) for c in range(10)])
    predicted = torch.cdist(stats(vx), means).argmin(1)
    assert float((predicted == vy).float().mean()) < 0.2


def test_every_class_is_drawn() -> None:
    """The object differs from the background: the image's spread is larger than the noise alone in every class."""
    data = SyntheticShapes(10, 64, seed=2, cache=False)
    x, y = data.tensors()
    centre_vs_noise = x.flatten(2).std(2).mean(1)
    assert y.tolist() == list(range(10))
    assert bool((centre_vs_noise > 0.2).all()), centre_vs_noise


# ------------------------------------------------------------------------------------------ CIFAR-10
def write_fake_cifar(parent: Path, *, per_batch: int = 3, test: int = 4, byte_keys: bool = False) -> np.ndarray:
    """A cifar-10-batches-py folder in the distributed pickle format (dicts with 'data' N x 3072 uint8 and
    'labels'; 'label_names' in batches.meta). Returns the training images as N x 3072."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    key = (lambda k: k.encode()) if byte_keys else (lambda k: k)
    rng = np.random.default_rng(0)
    train = []
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        n = test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [(i + k) % 10 for k in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({key("batch_label"): name, key("labels"): labels, key("data"): data,
                         key("filenames"): [f"img{k}.png" for k in range(n)]}, f, protocol=2)
        if name != "test_batch":
            train.append(data)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({key("label_names"): names, key("num_cases_per_batch"): per_batch, key("num_vis"): 3072}, f,
                    protocol=2)
    return np.concatenate(train)


@pytest.mark.parametrize("byte_keys", [False, True])
def test_cifar10_reads_the_pickle_format(tmp_path: Path, byte_keys: bool) -> None:
    raw = write_fake_cifar(tmp_path, byte_keys=byte_keys)
    train = load_cifar10(tmp_path)  # the parent folder ...
    same = load_cifar10(tmp_path / "cifar-10-batches-py")  # ... or the folder itself
    test = load_cifar10(tmp_path, train=False)
    assert (len(train), len(same), len(test)) == (15, 15, 4)
    assert train.num_classes == 10 and train.classes[0] == "airplane" and train.classes[9] == "truck"
    assert train.targets[:4] == [0, 1, 2, 1]
    x, y = train[4]
    assert x.shape == (3, 32, 32) and y == 2
    # Channel-major rows of 1024: pixel (c, h, w) is byte c*1024 + h*32 + w, scaled to [-1, 1].
    expected = torch.from_numpy(raw[4].reshape(3, 32, 32).astype(np.float32)) / 255 * 2 - 1
    assert torch.allclose(x, expected, atol=1e-6)


def test_cifar10_custom_transform_gets_a_pil_image(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    data = load_cifar10(tmp_path, transform=lambda img: img.size)
    assert data[0][0] == (32, 32)


def test_cifar10_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.*cifar-10-batches-py.*data_batch_1"):
        load_cifar10(tmp_path / "nowhere")
    write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3"):
        load_cifar10(tmp_path)
    load_cifar10(tmp_path, train=False)  # the test split does not need it


def test_cifar10_malformed_files(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="test_batch.*not a CIFAR-10 python pickle"):
        load_cifar10(tmp_path, train=False)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"N x 3072.*\(2, 100\)"):
        load_cifar10(tmp_path, train=False)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]}, f)
    with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
        load_cifar10(tmp_path, train=False)


class _Exploit:
    """Unpickling this object creates the file ``marker``: the proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (Path.touch, (self.marker,))


def test_cifar10_pickles_cannot_run_code(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    marker = tmp_path / "pickle_ran_code"
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": _Exploit(marker), "labels": [0]}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        load_cifar10(tmp_path, train=False)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- ImageFolder
def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, size=(48, 40)) -> None:
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{k}.png")


def test_image_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "tree")
    data = load_image_folder(tmp_path / "tree", inception_eval_transform(32))
    assert len(data) == 6 and data.classes == ["cat", "dog"] and data.num_classes == 2
    x, y = data[5]
    assert x.shape == (3, 32, 32) and y == 1
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    plain = load_image_folder(tmp_path / "tree")  # default: ToTensor + [-1, 1], no resizing
    assert plain[0][0].shape == (3, 40, 48)


def test_image_folder_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.*ROOT/<class name>/<image file>"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="empty.*no usable images"):
        load_image_folder(tmp_path / "empty")


# ----------------------------------------------------------------------------------------- transforms
def test_inception_transforms() -> None:
    from torchvision import transforms as T

    train = inception_train_transform(64)
    crop = next(t for t in train.transforms if isinstance(t, T.RandomResizedCrop))
    assert crop.size == (64, 64) and crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((0.75, 4 / 3))
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in train.transforms)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    torch.manual_seed(0)
    a = train(image)
    torch.manual_seed(0)
    assert torch.equal(a, train(image)) and a.shape == (3, 64, 64)

    evaluate = inception_eval_transform(299)
    assert [type(t).__name__ for t in evaluate.transforms] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert evaluate.transforms[0].size == 342 and inception_eval_transform(224).transforms[0].size == 256
    # The crop keeps the central 87.5%: a white centre square of 90% of the side fills it, one of 80% does not.
    for margin, fills in ((20, True), (40, False)):
        canvas = np.zeros((400, 400, 3), np.uint8)
        canvas[margin:400 - margin, margin:400 - margin] = 255
        out = inception_eval_transform(64)(Image.fromarray(canvas))
        assert out.shape == (3, 64, 64) and (float(out.min()) > 0.9) == fills
        assert float(out[:, 32, 32].min()) == 1.0
    normalise = evaluate.transforms[-1]
    assert tuple(normalise.mean) == (0.5, 0.5, 0.5) and tuple(normalise.std) == (0.5, 0.5, 0.5)


# ------------------------------------------------------------------------------------------ the specs
def test_build_dataset_specs(tmp_path: Path) -> None:
    synthetic = build_dataset("synthetic", "val", 40, n=30, seed=2)
    assert isinstance(synthetic, SyntheticShapes) and len(synthetic) == 30 and synthetic[0][0].shape == (3, 40, 40)
    assert synthetic.split == "val" and synthetic.seed == 2
    shapes = build_dataset("shapes", "train", n=20)
    assert shapes.image_size == 32 and len(shapes) == 20

    write_fake_cifar(tmp_path / "c")
    cifar = build_dataset(f"cifar10:{tmp_path / 'c'}", "train", augment=False)
    assert len(cifar) == 15 and cifar.num_classes == 10 and cifar[0][0].shape == (3, 32, 32)
    assert torch.equal(cifar[0][0], load_cifar10(tmp_path / "c")[0][0])
    resized = build_dataset(f"cifar10:{tmp_path / 'c'}", "test", 48)
    assert len(resized) == 4 and resized[0][0].shape == (3, 48, 48)

    write_image_folder(tmp_path / "f" / "train")
    write_image_folder(tmp_path / "f" / "val", per_class=1)
    folder_train = build_dataset(f"imagefolder:{tmp_path / 'f'}", "train", 36)
    folder_val = build_dataset(f"imagefolder:{tmp_path / 'f'}", "val", 36)
    assert (len(folder_train), len(folder_val)) == (6, 2) and folder_val.num_classes == 2
    assert folder_train[0][0].shape == folder_val[0][0].shape == (3, 36, 36)


def test_build_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data spec 'mnist:x'.*synthetic.*cifar10:PATH.*imagefolder:PATH"):
        build_dataset("mnist:x")
    with pytest.raises(ValueError, match="needs a folder"):
        build_dataset("cifar10")
    with pytest.raises(ValueError, match="synthetic difficulty ./data.: expected a preset"):
        build_dataset("synthetic:/data")
    with pytest.raises(ValueError, match="split"):
        build_dataset("synthetic", "holdout")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        build_dataset(f"cifar10:{tmp_path / 'none'}")
    write_image_folder(tmp_path / "f" / "train")
    with pytest.raises(FileNotFoundError, match=r"f/val.*PATH/val/<class>"):
        build_dataset(f"imagefolder:{tmp_path / 'f'}", "val")


# -------------------------------------------------------------------------------------- the data order
def test_loader_order_is_a_function_of_seed_and_epoch() -> None:
    data = make_synthetic("train", 50, 32, seed=0)

    def labels_seen(loader) -> list[int]:
        return [int(v) for _, y in loader for v in y]

    a, b = make_loader(data, 8, shuffle=True, seed=7), make_loader(data, 8, shuffle=True, seed=7)
    first = labels_seen(a)
    assert first == labels_seen(b) == labels_seen(a)  # re-iterating replays the epoch: no hidden state
    assert list(a.sampler) == epoch_order(50, 7, 0).tolist()
    a.sampler.set_epoch(1)
    assert list(a.sampler) == epoch_order(50, 7, 1).tolist() != epoch_order(50, 7, 0).tolist()
    assert list(make_loader(data, 8, shuffle=True, seed=8).sampler) != epoch_order(50, 7, 0).tolist()
    # resuming mid-epoch: skip the samples of the batches already done
    a.sampler.set_epoch(1, start=16)
    assert list(a.sampler) == epoch_order(50, 7, 1)[16:].tolist() and len(a) == 5
    assert list(make_loader(data, 8).sampler) == list(range(50))
    assert len(make_loader(data, 8, drop_last=True)) == 6
    with pytest.raises(ValueError, match="start"):
        EpochSampler(10).set_epoch(0, start=11)


# Pinned on purpose: an epoch's order is part of what a checkpoint means. A run resumed mid-epoch, perhaps by a
# later version of this code, must visit the rest of the very order the interrupted run was visiting, so a change
# to epoch_order has to change these lines too (and say so). The orders come from numpy's SeedSequence([seed,
# epoch]) (whose output numpy keeps stable across versions) seeding torch.randperm on a CPU generator.
PINNED_ORDERS = {
    (0, 0): [6, 3, 1, 5, 8, 7, 0, 2, 9, 4],
    (0, 1): [4, 8, 5, 0, 7, 6, 2, 3, 9, 1],
    (1, 0): [8, 1, 4, 2, 9, 7, 0, 6, 3, 5],
    (7, 3): [1, 5, 2, 8, 7, 9, 6, 3, 0, 4],
}


def test_epoch_order_is_the_pinned_permutation_of_its_seed_and_epoch() -> None:
    for (seed, epoch), order in PINNED_ORDERS.items():
        assert epoch_order(10, seed, epoch).tolist() == order
    orders = [epoch_order(500, seed, epoch).tolist() for seed in (0, 1, 2**40 + 3) for epoch in (0, 1, 2)]
    assert all(sorted(order) == list(range(500)) for order in orders)
    assert len({tuple(order) for order in orders}) == len(orders)  # every (seed, epoch) has an order of its own
    assert epoch_order(0, 0, 0).tolist() == [] and epoch_order(1, 5, 9).tolist() == [0]


class _RecordingData(torch.utils.data.Dataset):
    """Four features and a label per sample; records the index of every sample read, in order."""

    def __init__(self, n: int) -> None:
        self.x, self.y = torch.randn(n, 4, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 2
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.read.append(int(index))
        return self.x[index], self.y[index]


def test_the_trainer_reads_samples_in_the_order_of_make_loader() -> None:
    data = _RecordingData(12)
    loader = make_loader(data, 4, shuffle=True, seed=5)
    expected = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        expected += list(loader.sampler)
    config = TrainConfig(steps=6, batch_size=4, lr=0.01, device="cpu", seed=5, log_every=1, progress=False)
    Trainer(nn.Linear(4, 2), config, data).fit()  # two epochs of three batches
    assert data.read == expected


def test_make_loader_draws_the_trainers_order() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(100))
    for seed, epoch in [(0, 0), (3, 5), (2**33 + 1, 2)]:
        loader = make_loader(data, 10, shuffle=True, seed=seed, epoch=epoch)
        trainer_batches = DataSource.of(data, "data").epoch_batches(10, seed, epoch, 0)
        assert [b[0].tolist() for b in loader] == [b[0].tolist() for b in trainer_batches]
