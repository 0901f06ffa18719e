"""OODDataModule on the real offline data: splits, loaders, batches, sources, transforms, errors."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from datamodules.config import DataConfig, resolve_data_config
from datamodules.idx import load_idx_split
from datamodules.ood_datamodule import ImageTensorDataset, OODDataModule, collate_batch, split_indices
from tests.helpers import DATA_DIR, requires_data


def make_dm(**overrides: Any) -> OODDataModule:
    settings: dict[str, Any] = {
        "data_dir": str(DATA_DIR),
        "outliers": ["mnist"],
        "max_train_samples": 300,
        "max_eval_samples": 200,
        "batch_size": 64,
        "eval_batch_size": 128,
    }
    settings.update(overrides)
    dm = OODDataModule(DataConfig(**settings))
    dm.setup("fit")
    return dm


def dataset(loader: DataLoader) -> ImageTensorDataset:
    assert isinstance(loader.dataset, ImageTensorDataset)
    return loader.dataset


def eval_sets(dm: OODDataModule) -> dict[str, ImageTensorDataset]:
    return {dataset(loader).name: dataset(loader) for loader in dm.test_dataloader()}


def fashion(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return load_idx_split(DATA_DIR / "fashion-mnist", split)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def full_dm() -> OODDataModule:
    return make_dm(max_train_samples=None, max_eval_samples=None)


@requires_data
def test_split_sizes_follow_val_fraction(full_dm: OODDataModule) -> None:
    assert len(dataset(full_dm.train_dataloader())) == 54000
    assert [len(dataset(loader)) for loader in full_dm.val_dataloader()] == [6000, 10000]
    assert [len(dataset(loader)) for loader in full_dm.test_dataloader()] == [10000, 10000]
    assert len(dataset(full_dm.reference_dataloader())) == 54000


@requires_data
def test_split_is_disjoint_covering_and_used_by_the_datamodule(full_dm: OODDataModule) -> None:
    train_index, val_index = split_indices(60000, 0.1, seed=0)
    assert len(train_index) == 54000 and len(val_index) == 6000
    assert len(np.intersect1d(train_index.numpy(), val_index.numpy())) == 0
    assert torch.equal(torch.cat([train_index, val_index]).sort().values, torch.arange(60000))
    images, _ = fashion("train")
    assert torch.equal(dataset(full_dm.val_dataloader()[0]).images, images[val_index])
    assert torch.equal(dataset(full_dm.train_dataloader()).images, images[train_index])


@requires_data
def test_split_is_deterministic_per_seed() -> None:
    first_train, first_val = split_indices(1000, 0.2, seed=0)
    again_train, again_val = split_indices(1000, 0.2, seed=0)
    other_train, other_val = split_indices(1000, 0.2, seed=1)
    assert torch.equal(first_val, again_val) and torch.equal(first_train, again_train)
    assert not torch.equal(first_val, other_val)
    val_a = dataset(make_dm(split_seed=5).val_dataloader()[0]).images
    val_b = dataset(make_dm(split_seed=5).val_dataloader()[0]).images
    val_c = dataset(make_dm(split_seed=6).val_dataloader()[0]).images
    assert torch.equal(val_a, val_b)
    assert not torch.equal(val_a, val_c)


@requires_data
def test_loader_order_matches_eval_set_names() -> None:
    dm = make_dm(outliers=["mnist", "hflip", "noise=uniform_noise"])
    assert dm.eval_set_names == ["fashion_mnist", "mnist", "hflip", "noise"]
    assert dm.outlier_names == ["mnist", "hflip", "noise"]
    assert [dataset(loader).name for loader in dm.val_dataloader()] == dm.eval_set_names
    assert [dataset(loader).name for loader in dm.test_dataloader()] == dm.eval_set_names
    # Validation holds out inlier *train* images; test uses the inlier test split.
    train_images, test_images = fashion("train")[0], fashion("test")[0]
    held_out = {bytes(image.numpy()) for image in train_images[split_indices(60000, 0.1, 0)[1]]}
    test_rows = {bytes(image.numpy()) for image in test_images}
    val_images = dataset(dm.val_dataloader()[0]).images
    inlier_test_images = dataset(dm.test_dataloader()[0]).images
    assert all(bytes(image.numpy()) in held_out for image in val_images)
    assert all(bytes(image.numpy()) in test_rows for image in inlier_test_images)
    assert all(not loader.drop_last for loader in dm.test_dataloader())


@requires_data
def test_batches_are_float_images_labels_and_positions() -> None:
    dm = make_dm()
    x, y, index = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (64, 1, 28, 28)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    assert y.dtype == torch.int64 and set(y.tolist()) <= set(range(10))
    assert index.dtype == torch.int64
    train = dataset(dm.train_dataloader())
    assert torch.equal(x, train.images[index].float() / 255)
    assert torch.equal(y, train.labels[index])
    assert index.tolist() != sorted(index.tolist())  # the training loader shuffles

    for loader in dm.val_dataloader():
        batches = list(loader)
        positions = torch.cat([batch[2] for batch in batches])
        assert torch.equal(positions, torch.arange(len(dataset(loader))))  # no shuffle, no drops
        assert [len(batch[0]) for batch in batches] == [128, 72]
    reference = torch.cat([batch[2] for batch in dm.reference_dataloader()])
    assert torch.equal(reference, torch.arange(300))


@requires_data
def test_single_item_access_matches_batches() -> None:
    dm = make_dm()
    data = dataset(dm.test_dataloader()[0])
    x, y, index = data[7]
    batch_x, batch_y, batch_index = data.__getitems__([7])
    assert x.shape == (1, 28, 28) and torch.equal(x, batch_x[0])
    assert int(y) == int(batch_y[0]) and int(index) == int(batch_index[0]) == 7
    assert int(data[-1][2]) == len(data) - 1
    with pytest.raises(IndexError):
        data[len(data)]


@requires_data
def test_sample_caps_are_seeded_subsets() -> None:
    dm = make_dm(max_train_samples=100, max_eval_samples=50, outliers=["mnist", "hflip"])
    assert len(dataset(dm.train_dataloader())) == 100
    assert [len(dataset(loader)) for loader in dm.val_dataloader()] == [50, 50, 50]
    assert [len(dataset(loader)) for loader in dm.test_dataloader()] == [50, 50, 50]
    capped = dataset(dm.test_dataloader()[0]).images
    full = {bytes(image.numpy()) for image in fashion("test")[0]}
    assert all(bytes(image.numpy()) in full for image in capped)
    again = make_dm(max_train_samples=100, max_eval_samples=50, outliers=["mnist", "hflip"])
    assert torch.equal(dataset(again.test_dataloader()[0]).images, capped)


@requires_data
def test_geometric_transform_outliers_transform_the_inlier_test_set() -> None:
    dm = make_dm(outliers=["hflip", "vflip", "rot90"])
    sets = eval_sets(dm)
    inlier = sets["fashion_mnist"]
    assert torch.equal(sets["hflip"].images, inlier.images.flip(-1))
    assert torch.equal(sets["vflip"].images, inlier.images.flip(-2))
    assert torch.equal(sets["rot90"].images, torch.rot90(inlier.images, 1, dims=(-2, -1)))
    assert not torch.equal(sets["hflip"].images, inlier.images)
    assert torch.equal(sets["hflip"].labels, inlier.labels)


@requires_data
def test_noise_outliers_are_seeded_and_in_range() -> None:
    outliers = ["gaussian_noise", "uniform_noise"]
    first = eval_sets(make_dm(outliers=outliers))
    second = eval_sets(make_dm(outliers=outliers))
    other_seed = eval_sets(make_dm(outliers=outliers, noise_seed=99))
    for name in outliers:
        assert torch.equal(first[name].images, second[name].images)
        assert not torch.equal(first[name].images, other_seed[name].images)
        assert first[name].images.shape == first["fashion_mnist"].images.shape
        assert first[name].images.dtype == torch.uint8
        assert first[name].labels.tolist() == [-1] * 200
    gaussian = first["gaussian_noise"].images.float()
    assert abs(float(gaussian.mean()) - 127.5) < 2 and 55 < float(gaussian.std()) < 70
    uniform = first["uniform_noise"].images
    assert int(uniform.min()) == 0 and int(uniform.max()) == 255


@requires_data
def test_constant_outliers_are_constant_per_image() -> None:
    images = eval_sets(make_dm(outliers=["constant"]))["constant"].images
    flat = images.flatten(1)
    assert torch.equal(flat.min(dim=1).values, flat.max(dim=1).values)
    assert len(set(flat[:, 0].tolist())) > 50  # grey levels differ between images
    rgb = eval_sets(make_dm(outliers=["constant"], channels=3))["constant"].images
    assert rgb.shape[1:] == (3, 28, 28)
    assert torch.equal(rgb, rgb[:, :, :1, :1].expand_as(rgb))
    assert bool((rgb[:, 0, 0, 0] != rgb[:, 1, 0, 0]).any())  # a colour per image, not a grey


@requires_data
@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_outlier_source(tmp_path: Path, layout: str) -> None:
    grey = np.random.default_rng(3).integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    stored = {"NHW": grey, "NHWC": grey[..., None], "NCHW": grey[:, None]}[layout]
    path = tmp_path / "blobs.npz"
    np.savez(path, images=stored, labels=np.arange(40) % 4)
    sets = eval_sets(make_dm(outliers=[str(path)]))
    assert list(sets) == ["fashion_mnist", "blobs"]
    assert torch.equal(sets["blobs"].images, torch.from_numpy(grey)[:, None])
    assert sets["blobs"].labels.tolist() == [i % 4 for i in range(40)]


@requires_data
def test_npz_without_labels_and_bad_layouts(tmp_path: Path) -> None:
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, images=np.zeros((5, 28, 28), dtype=np.uint8))
    assert eval_sets(make_dm(outliers=[str(unlabelled)]))["unlabelled"].labels.tolist() == [-1] * 5
    floats = tmp_path / "floats.npz"
    np.savez(floats, images=np.zeros((5, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        make_dm(outliers=[str(floats)])
    five_channels = tmp_path / "five.npz"
    np.savez(five_channels, images=np.zeros((5, 28, 28, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"accepted layouts.*\(N, H, W, C\)"):
        make_dm(outliers=[str(five_channels)])
    wrong_key = tmp_path / "wrong.npz"
    np.savez(wrong_key, pictures=np.zeros((5, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match="pictures"):
        make_dm(outliers=[str(wrong_key)])


@requires_data
def test_idx_directory_by_path_and_explicit_names() -> None:
    dm = make_dm(outliers=["mnist", f"digits={DATA_DIR / 'mnist'}", "flipped=hflip"])
    assert dm.eval_set_names == ["fashion_mnist", "mnist", "digits", "flipped"]
    sets = eval_sets(dm)
    assert torch.equal(sets["digits"].images, sets["mnist"].images)
    assert torch.equal(sets["flipped"].images, sets["fashion_mnist"].images.flip(-1))
    by_path = make_dm(outliers=[str(DATA_DIR / "mnist")])
    assert by_path.eval_set_names == ["fashion_mnist", "mnist"]


@requires_data
def test_inlier_from_idx_path_with_display_name() -> None:
    dm = make_dm(inlier=f"fm={DATA_DIR / 'fashion-mnist'}", outliers=["hflip"])
    assert dm.eval_set_names == ["fm", "hflip"]
    named = make_dm(inlier="Fashion-MNIST", outliers=["hflip"])
    assert named.eval_set_names == ["fashion_mnist", "hflip"]
    by_path_train = dataset(dm.train_dataloader()).images
    assert torch.equal(by_path_train, dataset(named.train_dataloader()).images)


@requires_data
def test_image_folder_outlier_source(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    for i, image in enumerate(pixels):
        folder = tmp_path / "shapes" / ("a" if i < 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i}.png")
    shapes = eval_sets(make_dm(outliers=[str(tmp_path / "shapes")]))["shapes"]
    assert torch.equal(shapes.images, torch.from_numpy(pixels)[:, None])
    assert shapes.labels.tolist() == [0, 0, 1, 1]


def write_idx_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write an uncompressed IDX image/label pair (the layout torchvision's MNIST classes read)."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
        header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
        (folder / f"{prefix}-{kind}").write_bytes(header + array.tobytes())


def test_named_dataset_falls_back_to_torchvision_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for prefix, count in (("train", 20), ("t10k", 8)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 3
        write_idx_split(tmp_path / "KMNIST" / "raw", prefix, images, labels)
    dm = make_dm(data_dir=str(tmp_path), inlier="KMNIST", outliers=["hflip"], val_fraction=0.25)
    assert dm.eval_set_names == ["kmnist", "hflip"]
    assert len(dataset(dm.train_dataloader())) == 15
    assert [len(dataset(loader)) for loader in dm.val_dataloader()] == [5, 8]
    assert dm.image_shape == (1, 28, 28)


@requires_data
def test_emnist_offline_copy_is_turned_upright(tmp_path: Path) -> None:
    stored = np.zeros((3, 28, 28), dtype=np.uint8)
    stored[:, 0, :] = 255  # the top row as stored is the left column once upright
    write_idx_split(tmp_path / "emnist", "t10k", stored, np.array([1, 2, 3], dtype=np.uint8))
    inlier = str(DATA_DIR / "fashion-mnist")
    dm = make_dm(data_dir=str(tmp_path), inlier=inlier, outliers=["emnist"])
    letters = eval_sets(dm)["emnist"]
    assert torch.equal(letters.images[:, 0, :, 0], torch.full((3, 28), 255, dtype=torch.uint8))
    assert int(letters.images[:, 0, :, 1:].max()) == 0
    assert letters.labels.tolist() == [1, 2, 3]


@requires_data
def test_npz_inlier_needs_train_and_test_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    splits = {
        name: rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        for name, count in (("train_images", 30), ("test_images", 12))
    }
    np.savez(
        tmp_path / "both.npz",
        train_images=splits["train_images"],
        test_images=splits["test_images"],
        train_labels=np.zeros(30, dtype=np.int64),
    )
    dm = make_dm(inlier=str(tmp_path / "both.npz"), outliers=["vflip"], val_fraction=0.1)
    assert dm.eval_set_names == ["both", "vflip"]
    assert [len(dataset(loader)) for loader in dm.test_dataloader()] == [12, 12]
    assert len(dataset(dm.train_dataloader())) == 27
    assert dataset(dm.test_dataloader()[0]).labels.tolist() == [-1] * 12
    np.savez(tmp_path / "single.npz", images=splits["test_images"])
    with pytest.raises(ValueError, match="'train_images' and 'test_images'"):
        make_dm(inlier=str(tmp_path / "single.npz"))


def write_rgb_npz(path: Path) -> np.ndarray:
    colours = np.zeros((6, 32, 32, 3), dtype=np.uint8)
    colours[..., 0] = 255  # pure red: luminance 0.299 * 255 = 76.2
    np.savez(path, images=colours)
    return colours


@requires_data
def test_mismatched_shapes_error_names_both_sets_and_fixes(tmp_path: Path) -> None:
    write_rgb_npz(tmp_path / "cifar_like.npz")
    with pytest.raises(ValueError) as info:
        make_dm(outliers=[str(tmp_path / "cifar_like.npz")])
    message = str(info.value)
    for part in ("'cifar_like'", "(3, 32, 32)", "'fashion_mnist'", "(1, 28, 28)"):
        assert part in message
    assert "data.image_size" in message and "data.channels" in message


@requires_data
def test_conversion_to_the_inlier_shape(tmp_path: Path) -> None:
    write_rgb_npz(tmp_path / "red.npz")
    dm = make_dm(outliers=[str(tmp_path / "red.npz")], image_size=28, channels=1)
    red = eval_sets(dm)["red"].images
    assert red.shape == (6, 1, 28, 28)
    assert set(red.unique().tolist()) == {76}
    assert dm.image_shape == (1, 28, 28)


@requires_data
def test_conversion_of_every_set_to_rgb_and_new_size() -> None:
    before_setup = OODDataModule(DataConfig(data_dir=str(DATA_DIR), image_size=32, channels=3))
    assert before_setup.image_shape == (3, 32, 32)
    dm = make_dm(outliers=["mnist", "hflip"], image_size=32, channels=3)
    assert dm.image_shape == (3, 32, 32)
    for loader in [dm.train_dataloader(), *dm.val_dataloader(), *dm.test_dataloader()]:
        x, _, _ = next(iter(loader))
        assert x.shape[1:] == (3, 32, 32)
        assert torch.equal(x[:, 0], x[:, 2])  # grey repeated into R, G and B
    sets = eval_sets(dm)
    assert torch.equal(sets["hflip"].images, sets["fashion_mnist"].images.flip(-1))
    resized = sets["fashion_mnist"].images[:, :1].float()
    assert 0.5 * 255 > float(resized.mean()) > 0.2 * 255  # resized, not blanked


@requires_data
def test_shape_and_classes_before_and_after_setup() -> None:
    dm = OODDataModule(DataConfig(data_dir=str(DATA_DIR)))
    assert dm.image_shape == (1, 28, 28)
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()
    path_config = DataConfig(data_dir=str(DATA_DIR), inlier=str(DATA_DIR / "mnist"), outliers=[])
    path_inlier = OODDataModule(path_config)
    with pytest.raises(RuntimeError, match="setup"):
        _ = path_inlier.image_shape
    path_inlier.setup()
    assert path_inlier.image_shape == (1, 28, 28)
    loaders = path_inlier.val_dataloader()
    path_inlier.setup("test")  # a second setup keeps the loaded data
    assert dataset(path_inlier.val_dataloader()[0]).images is dataset(loaders[0]).images


@requires_data
def test_missing_dataset_error_lists_places_searched(tmp_path: Path) -> None:
    dm = OODDataModule(DataConfig(data_dir=str(tmp_path), outliers=[]))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    assert str(tmp_path / "fashion-mnist") in message  # offline IDX copy
    assert "FashionMNIST/raw" in message  # torchvision's own layout
    assert "DATA_DIR" in message and "data.download=true" in message
    assert "dataset-fashion-mnist" in message


@requires_data
def test_unknown_name_error_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        OODDataModule(DataConfig(data_dir=str(DATA_DIR), outliers=["not_a_dataset"]))
    message = str(info.value)
    assert "'not_a_dataset'" in message and "data.outliers" in message
    for name in ("mnist", "fashion_mnist", "kmnist", "emnist", "cifar10", "svhn", "celeba"):
        assert name in message
    assert "hflip" in message and ".npz" in message and "name=" in message


@requires_data
def test_spec_errors() -> None:
    with pytest.raises(ValueError, match="outlier transform"):
        OODDataModule(DataConfig(inlier="hflip"))
    with pytest.raises(ValueError, match="unique.*'mnist'"):
        OODDataModule(DataConfig(outliers=["mnist", "MNIST"]))
    with pytest.raises(ValueError, match="malformed"):
        OODDataModule(DataConfig(outliers=["=mnist"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_dm(outliers=["./no/such/outliers.npz"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("val_fraction", 0.0),
        ("val_fraction", 1.0),
        ("batch_size", 0),
        ("eval_batch_size", 0),
        ("channels", 2),
        ("image_size", 0),
        ("max_eval_samples", 0),
        ("num_workers", -1),
    ],
)
def test_config_rejects_impossible_values(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"data.{key}"):
        DataConfig(**{key: value})


@requires_data
def test_config_resolves_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", "/somewhere/datasets")
    assert resolve_data_config(DataConfig()).data_dir == "/somewhere/datasets"
    assert resolve_data_config({"batch_size": 7}).batch_size == 7
    monkeypatch.delenv("DATA_DIR")
    assert resolve_data_config(DataConfig()).data_dir == "data"


@requires_data
def test_distributed_sampler_batches_through_collate() -> None:
    dm = make_dm(max_eval_samples=101)
    data = dataset(dm.val_dataloader()[0])
    seen = []
    for rank in range(2):
        sampler: DistributedSampler[int] = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)
        loader = DataLoader(
            data,
            batch_size=16,
            sampler=sampler,
            # torch types collate_fn as taking a list of samples; __getitems__ hands it the batch.
            collate_fn=collate_batch,
        )
        for x, y, index in loader:
            assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
            assert len(x) == len(y) == len(index)
            assert torch.equal(x, data.images[index].float() / 255)
            seen.append(index)
    positions = torch.cat(seen)
    assert len(positions) == 102  # 101 padded to 2 x 51 with one duplicate
    assert torch.equal(positions.unique(), torch.arange(101))
