"""Datasets by name, the published transforms, stratified validation / few-shot splits and the in-memory fast path.

On-disk datasets are read from small files generated here in their real published formats.
"""
from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision import transforms as T

from hsakd_ray.config import DataConfig
from hsakd_ray.data import (
    DATASETS,
    as_tensors,
    build_datasets,
    dataset_targets,
    stratified_split,
    tensor_augmentation,
)
from hsakd_ray.data.transforms import RandomCropFlip

# The per-channel (mean, std) normalisation HSAKD's CIFAR scripts publish (CIFAR-100: train_baseline_cifar.py),
# and the usual CIFAR-10 figures; written out here, not imported from the module under test.
CIFAR100_STATS = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def plain_pipeline(stats, size: int | None = None) -> T.Compose:
    """What an evaluation item must be: (resize,) ToTensor, Normalize by the published statistics; no crop or flip."""
    return T.Compose(([T.Resize((size, size))] if size else []) + [T.ToTensor(), T.Normalize(*stats)])


def digits(**overrides) -> DataConfig:
    return DataConfig(name="digits", **overrides)


def class_counts(labels) -> Counter:
    return Counter(int(v) for v in labels)


def assert_fraction_per_class(part: Counter, whole: Counter, fraction: float) -> None:
    assert set(part) == set(whole)
    for label, n in whole.items():
        assert abs(part[label] - fraction * n) <= 1, (label, part[label], n)


# ---------------------------------------------------------------- stratified splits

def test_stratified_split_holds_fraction_of_every_class_deterministically():
    targets = [i % 7 for i in range(700)] + [0] * 50
    keep, held = stratified_split(targets, 0.3, seed=5)
    assert sorted(keep + held) == list(range(len(targets)))
    assert_fraction_per_class(class_counts(targets[i] for i in held), class_counts(targets), 0.3)
    assert (keep, held) == stratified_split(targets, 0.3, seed=5)
    assert held != stratified_split(targets, 0.3, seed=6)[1]


def test_stratified_split_keeps_every_class_in_both_parts():
    keep, held = stratified_split([0, 0, 1, 1, 1, 2, 2], 0.01, seed=0)
    assert {0, 1, 2} == {[0, 0, 1, 1, 1, 2, 2][i] for i in held} == {[0, 0, 1, 1, 1, 2, 2][i] for i in keep}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_stratified_split_rejects_fraction_outside_open_unit_interval(fraction):
    with pytest.raises(ValueError, match="fraction"):
        stratified_split([0, 1, 0, 1], fraction, seed=0)


# ---------------------------------------------------------------- digits

def test_digits_items_are_normalised_rgb_at_requested_size():
    for size, expected in [(None, 32), (16, 16)]:
        bundle = build_datasets(digits(image_size=size))
        image, label = bundle.train[0]
        assert image.shape == (3, expected, expected) and image.dtype == torch.float32
        assert isinstance(label, int)
        assert bundle.image_size == expected and bundle.num_classes == 10 and bundle.eval_split == "test"
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_digits_train_test_split_is_stratified_and_fixed():
    bundle = build_datasets(digits(split_seed=123))  # split_seed does not move the digits test set
    _, train_labels = as_tensors(bundle.train)
    _, test_labels = as_tensors(bundle.eval)
    assert len(bundle.train) + len(bundle.eval) == 1797
    whole = class_counts(train_labels) + class_counts(test_labels)
    assert len(whole) == 10
    assert_fraction_per_class(class_counts(test_labels), whole, 0.2)
    again = build_datasets(digits())
    assert torch.equal(as_tensors(again.eval)[0], as_tensors(bundle.eval)[0])
    assert torch.equal(as_tensors(again.train)[1], train_labels)


def test_digits_training_items_are_augmented_and_eval_items_are_not():
    bundle = build_datasets(digits())
    reads = torch.stack([bundle.train[0][0] for _ in range(20)])
    assert not all(torch.equal(reads[0], r) for r in reads[1:])
    stored = as_tensors(bundle.eval)[0]  # the normalised images, before any per-read transform
    assert all(torch.equal(bundle.eval[i][0], stored[i]) for i in range(0, len(bundle.eval), 37))
    plain = build_datasets(digits(augment=False))
    assert torch.equal(plain.train[0][0], as_tensors(plain.train)[0][0])


# ---------------------------------------------------------------- validation split and few-shot

def test_val_fraction_carves_stratified_validation_from_train_only():
    full = build_datasets(digits())
    bundle = build_datasets(digits(val_fraction=0.1, split_seed=3))
    assert bundle.eval_split == "val"
    assert isinstance(bundle.train, Subset) and isinstance(bundle.eval, Subset)
    train_idx, val_idx = set(bundle.train.indices), set(bundle.eval.indices)
    assert not train_idx & val_idx
    assert train_idx | val_idx == set(range(len(full.train)))
    full_images, full_labels = as_tensors(full.train)
    val_images, val_labels = as_tensors(bundle.eval)
    assert torch.equal(val_images, full_images[sorted(val_idx)])  # training images, never the test set
    assert_fraction_per_class(class_counts(val_labels), class_counts(full_labels), 0.1)
    assert dataset_targets(bundle.eval) == val_labels.tolist()


def test_val_split_is_the_same_every_call_and_unaugmented():
    first = build_datasets(digits(val_fraction=0.1, split_seed=3))
    second = build_datasets(digits(val_fraction=0.1, split_seed=3))
    assert first.eval.indices == second.eval.indices and first.train.indices == second.train.indices
    assert build_datasets(digits(val_fraction=0.1, split_seed=4)).eval.indices != first.eval.indices
    assert torch.equal(first.eval[0][0], first.eval[0][0])
    assert tensor_augmentation(first.eval) is None
    assert isinstance(tensor_augmentation(first.train), RandomCropFlip)


def test_few_shot_keeps_a_stratified_quarter_of_the_remaining_train_set():
    full = build_datasets(digits())
    bundle = build_datasets(digits(few_shot_ratio=0.25))
    assert bundle.eval_split == "test" and len(bundle.eval) == len(full.eval)
    kept, whole = class_counts(dataset_targets(bundle.train)), class_counts(dataset_targets(full.train))
    assert_fraction_per_class(kept, whole, 0.25)
    with_val = build_datasets(digits(few_shot_ratio=0.25, val_fraction=0.1))
    assert not set(with_val.train.indices) & set(with_val.eval.indices)


# ---------------------------------------------------------------- synthetic

def test_synthetic_sizes_shapes_and_determinism():
    cfg = DataConfig(name="synthetic", synthetic_train_size=60, synthetic_test_size=20, synthetic_classes=3,
                     image_size=16)
    bundle = build_datasets(cfg)
    assert (len(bundle.train), len(bundle.eval), bundle.num_classes) == (60, 20, 3)
    assert bundle.train[0][0].shape == (3, 16, 16)
    assert class_counts(dataset_targets(bundle.train)) == {0: 20, 1: 20, 2: 20}
    assert torch.equal(as_tensors(build_datasets(cfg).eval)[0], as_tensors(bundle.eval)[0])


def test_synthetic_classes_are_learnable():
    bundle = build_datasets(DataConfig(name="synthetic", augment=False))
    x, y = as_tensors(bundle.train)
    xt, yt = as_tensors(bundle.eval)
    centroids = torch.stack([x[y == c].mean(0) for c in range(bundle.num_classes)]).flatten(1)
    predicted = torch.cdist(xt.flatten(1), centroids).argmin(1)
    assert (predicted == yt).float().mean() > 0.9


# ---------------------------------------------------------------- in-memory fast path

def test_random_crop_flip_keeps_shape_and_pads_with_black():
    crop = RandomCropFlip(padding=2, flip=True, fill=(-1.0, -2.0, -3.0))
    batch = torch.zeros(8, 3, 6, 6)
    out = crop(batch)
    assert out.shape == batch.shape and crop(batch[0]).shape == (3, 6, 6)
    assert set(out[:, 1].unique().tolist()) <= {0.0, -2.0}
    assert torch.equal(RandomCropFlip(0, False, (0.0,) * 3)(batch + 1), batch + 1)


def test_as_tensors_rejects_datasets_read_per_item(cifar_root):
    bundle = build_datasets(DataConfig(name="cifar10", root=str(cifar_root), image_size=24))  # resized: PIL items
    with pytest.raises(TypeError, match="in-memory"):
        as_tensors(bundle.train)


def test_cifar_at_native_size_is_held_in_memory_with_the_pil_pipelines_values(cifar_root):
    """ToTensor + Normalize done once for the whole set gives bit for bit what the PIL pipeline gives per item; the
    crop pads with the normalised black pixel, as RandomCrop(padding=4) before Normalize does."""
    bundle = build_datasets(DataConfig(name="cifar100", root=str(cifar_root), val_fraction=0.2))
    train_images, train_labels = as_tensors(bundle.train)
    eval_images, _ = as_tensors(bundle.eval)
    assert train_images.shape == (len(bundle.train), 3, 32, 32) and eval_images.shape == (len(bundle.eval), 3, 32, 32)
    assert len(bundle.train) + len(bundle.eval) == 300
    with open(cifar_root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    pil_eval = plain_pipeline(CIFAR100_STATS)
    index = bundle.train.indices[5]
    picture = Image.fromarray(raw["data"][index].reshape(3, 32, 32).transpose(1, 2, 0))
    assert torch.equal(train_images[5], pil_eval(picture)) and int(train_labels[5]) == raw["fine_labels"][index]
    crop = tensor_augmentation(bundle.train)
    assert isinstance(crop, RandomCropFlip) and (crop.padding, crop.flip) == (4, True)
    black = pil_eval(Image.new("RGB", (32, 32)))[:, 0, 0]
    assert torch.equal(torch.tensor(crop.fill), black)
    assert tensor_augmentation(build_datasets(DataConfig(name="cifar100", root=str(cifar_root),
                                                         augment=False)).train) is None


# ---------------------------------------------------------------- CIFAR in the published pickle format

class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the published CIFAR pickles do: ``encoding="latin1"`` loads
    them as str keys (what torchvision reads) and ``encoding="bytes"`` as b'data', b'fine_labels', ..."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def cifar_batch(n: int, classes: int, seed: int, label_keys: tuple[bytes, ...]) -> dict:
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"generated", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [b"img_%d.png" % i for i in range(n)]}
    for key in label_keys:
        batch[key] = [i % classes for i in range(n)]
    return batch


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    c100 = root / "cifar-100-python"
    c100.mkdir()
    write_py2_pickle(c100 / "train", cifar_batch(300, 100, 0, (b"fine_labels", b"coarse_labels")))
    write_py2_pickle(c100 / "test", cifar_batch(100, 100, 1, (b"fine_labels", b"coarse_labels")))
    write_py2_pickle(c100 / "meta", {b"fine_label_names": [b"c%d" % i for i in range(100)],
                                    b"coarse_label_names": [b"s%d" % i for i in range(20)]})
    c10 = root / "cifar-10-batches-py"
    c10.mkdir()
    for k in range(1, 6):
        write_py2_pickle(c10 / f"data_batch_{k}", cifar_batch(20, 10, 10 + k, (b"labels",)))
    write_py2_pickle(c10 / "test_batch", cifar_batch(20, 10, 20, (b"labels",)))
    write_py2_pickle(c10 / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)],
                                           b"num_cases_per_batch": 20, b"num_vis": 3072})
    return root


def test_generated_cifar_files_have_the_published_keys(cifar_root):
    with open(cifar_root / "cifar-100-python" / "train", "rb") as f:
        assert {b"data", b"fine_labels", b"coarse_labels"} <= set(pickle.load(f, encoding="bytes"))
    with open(cifar_root / "cifar-100-python" / "train", "rb") as f:
        assert {"data", "fine_labels"} <= set(pickle.load(f, encoding="latin1"))


@pytest.mark.parametrize(
    "name,folder,train_file,classes,stats,n_train",
    [("cifar100", "cifar-100-python", "train", 100, CIFAR100_STATS, 300),
     ("cifar10", "cifar-10-batches-py", "data_batch_1", 10, CIFAR10_STATS, 100)],
)
def test_cifar_reads_the_published_format(cifar_root, name, folder, train_file, classes, stats, n_train):
    bundle = build_datasets(DataConfig(name=name, root=str(cifar_root), augment=False))
    assert (len(bundle.train), bundle.num_classes, bundle.image_size) == (n_train, classes, 32)
    assert (bundle.mean, bundle.std) == stats
    with open(cifar_root / folder / train_file, "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    image, label = bundle.train[1]
    pixels = image * torch.tensor(stats[1]).view(3, 1, 1) + torch.tensor(stats[0]).view(3, 1, 1)
    expected = torch.from_numpy(raw["data"][1].reshape(3, 32, 32).astype(np.float32))
    assert torch.equal((pixels * 255).round(), expected)
    assert label == 1 and dataset_targets(bundle.train)[:3] == [0, 1, 2]


def test_cifar_published_augmentation_and_resize(cifar_root):
    bundle = build_datasets(DataConfig(name="cifar100", root=str(cifar_root), val_fraction=0.5, image_size=24))
    assert bundle.eval_split == "val" and bundle.train[0][0].shape == (3, 24, 24)
    with open(cifar_root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"]
    for i in (0, 7, 31):  # an evaluation item is the resized, normalised picture: no crop, no flip
        picture = Image.fromarray(raw[bundle.eval.indices[i]].reshape(3, 32, 32).transpose(1, 2, 0))
        assert torch.equal(bundle.eval[i][0], plain_pipeline(CIFAR100_STATS, 24)(picture))
    reads = [bundle.train[0][0] for _ in range(10)]
    assert not all(torch.equal(reads[0], r) for r in reads[1:])


# ---------------------------------------------------------------- image folders, Tiny ImageNet, STL-10

def save_image(path: Path, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(path)


def test_imagefolder_reads_class_folders_with_imagenet_transforms(tmp_path):
    for split, n in [("train", 4), ("val", 2)]:
        for c, name in enumerate(["ant", "bee", "cat"]):
            for i in range(n):
                save_image(tmp_path / split / name / f"{i}.png", (40, 30), 60 * c + i)
    bundle = build_datasets(DataConfig(name="imagefolder", root=str(tmp_path), image_size=32))
    assert (len(bundle.train), len(bundle.eval), bundle.num_classes) == (12, 6, 3)
    assert bundle.train[0][0].shape == bundle.eval[5][0].shape == (3, 32, 32)
    assert bundle.eval[5][1] == 2 and torch.equal(bundle.eval[0][0], bundle.eval[0][0])


def test_tinyimagenet_reads_val_annotations(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    (base).mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for c, wnid in enumerate(wnids):
        for i in range(3):
            save_image(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", (64, 64), 50 * c + i)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    val_labels = [2, 0, 1, 2]
    lines = []
    for j, c in enumerate(val_labels):
        save_image(base / "val" / "images" / f"val_{j}.JPEG", (64, 64), 40 * j)
        lines.append(f"val_{j}.JPEG\t{wnids[c]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    bundle = build_datasets(DataConfig(name="tinyimagenet", root=str(tmp_path)))
    assert (len(bundle.train), len(bundle.eval), bundle.num_classes, bundle.image_size) == (9, 4, 3, 64)
    assert dataset_targets(bundle.eval) == val_labels == [bundle.eval[j][1] for j in range(4)]
    assert bundle.train[0][0].shape == (3, 64, 64)
    small = build_datasets(DataConfig(name="tinyimagenet", root=str(base), image_size=32))
    assert small.eval[0][0].shape == small.train[8][0].shape == (3, 32, 32)


def test_stl10_reads_the_published_binary_format(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in [("train", 10), ("test", 5)]:
        rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        (np.arange(n, dtype=np.uint8) % 10 + 1).tofile(folder / f"{split}_y.bin")
    (folder / "unlabeled_X.bin").write_bytes(b"")
    bundle = build_datasets(DataConfig(name="stl10", root=str(tmp_path)))
    assert (len(bundle.train), len(bundle.eval), bundle.num_classes) == (10, 5, 10)
    assert bundle.train[0][0].shape == (3, 96, 96)
    assert dataset_targets(bundle.eval) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- errors a user can act on

@pytest.mark.parametrize(
    "overrides,fix",
    [({"name": "cifar100"}, "data.download"), ({"name": "cifar10"}, "data.download"),
     ({"name": "stl10"}, "data.download"), ({"name": "imagefolder"}, "data.train_root"),
     ({"name": "tinyimagenet"}, "data.root")],
)
def test_missing_dataset_directory_names_path_and_fix(tmp_path, overrides, fix):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        build_datasets(DataConfig(root=str(root), **overrides))
    message = str(info.value)
    assert str(root) in message and fix in message and "\n" not in message


def test_unknown_dataset_lists_the_allowed_names():
    with pytest.raises(ValueError) as info:
        build_datasets(DataConfig(name="mnist"))
    assert all(name in str(info.value) for name in DATASETS)


def test_importing_data_does_not_import_ray_or_mlflow():
    code = "import sys, hsakd_ray.data; assert not {'ray', 'mlflow'} & set(sys.modules), 'ray/mlflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_digits_are_read_as_scikit_learn_loads_them_without_importing_it():
    """A Train worker reads the bundled digits file itself (scikit-learn's import is 0.6 s of its start-up): the
    same images, labels and dtypes as ``load_digits``, and scikit-learn stays unimported."""
    code = ("import sys, numpy as np; from hsakd_ray.data.memory import digits_arrays; x, y = digits_arrays(); "
            "print(int('sklearn' in sys.modules)); np.save(sys.argv[1], x); np.save(sys.argv[2], y)")
    with tempfile.TemporaryDirectory() as tmp:
        xs, ys = f"{tmp}/x.npy", f"{tmp}/y.npy"
        out = subprocess.run([sys.executable, "-c", code, xs, ys], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "0"
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, labels = np.load(xs), np.load(ys)
    assert images.dtype == bunch.images.dtype and labels.dtype == bunch.target.dtype
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
