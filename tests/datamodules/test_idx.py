"""IDX reader: round trips, header and length validation, clear errors, the real offline files."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.idx import load_idx_split, read_idx
from tests.helpers import DATA_DIR, requires_data


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    result = read_idx(write_idx(tmp_path / "x-images-idx3-ubyte", array, compress))
    assert result.dtype == np.uint8
    assert result.shape == (5, 3, 4)
    np.testing.assert_array_equal(result, array)
    assert result.flags.writeable


def test_gzip_is_sniffed_not_taken_from_the_name(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    plain_named_gz = write_idx(tmp_path / "plain.gz", array, compress=False)
    gz_without_suffix = write_idx(tmp_path / "compressed", array, compress=True)
    np.testing.assert_array_equal(read_idx(plain_named_gz), array)
    np.testing.assert_array_equal(read_idx(gz_without_suffix), array)


@pytest.mark.parametrize("compress", [False, True])
def test_data_shorter_than_header_says_is_rejected(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / "short"
    data = idx_bytes(np.zeros((4, 5), dtype=np.uint8))[:-3]
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert "(4, 5)" in str(info.value)


def test_data_longer_than_header_says_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(np.zeros((4, 5), dtype=np.uint8)) + b"\x00")
    with pytest.raises(ValueError, match="longer than its header") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "header"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(ValueError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_non_idx_file_error_names_file_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not an IDX file")
    with pytest.raises(ValueError, match="not an IDX file") as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "68 65 6c 6c" in message  # what was found: the first bytes, "hell"
    assert "00 00" in message  # what is expected


def test_truncated_gzip_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    array = np.random.default_rng(2).integers(0, 256, size=4000, dtype=np.uint8)
    compressed = gzip.compress(idx_bytes(array))
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="cannot be decompressed") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_non_uint8_data_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ints"
    path.write_bytes(idx_bytes(np.zeros(3, dtype=">i4"), type_code=0x0C))
    with pytest.raises(ValueError, match="int32") as info:
        read_idx(path)
    assert "0x08" in str(info.value)


def test_load_split_accepts_test_prefix_and_adds_channel_axis(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(6, 7, 8), dtype=np.uint8)
    labels = np.arange(6, dtype=np.uint8)
    write_idx(tmp_path / "test-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "test-labels-idx1-ubyte", labels, compress=False)
    loaded_images, loaded_labels = load_idx_split(tmp_path, "test")
    assert loaded_images.dtype == torch.uint8
    assert loaded_images.shape == (6, 1, 7, 8)
    assert loaded_labels.dtype == torch.int64
    assert torch.equal(loaded_images[:, 0], torch.from_numpy(images))
    assert loaded_labels.tolist() == list(range(6))


def test_load_split_missing_files_lists_names_searched(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_idx_split(tmp_path, "test")
    message = str(info.value)
    assert str(tmp_path) in message
    for name in ("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz", "test-images-idx3-ubyte"):
        assert name in message


def test_load_split_rejects_label_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 2, 2), np.uint8), False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8), False)
    with pytest.raises(ValueError, match="4 images"):
        load_idx_split(tmp_path, "train")


@requires_data
def test_real_fashion_mnist_test_split() -> None:
    directory = DATA_DIR / "fashion-mnist"
    assert read_idx(directory / "t10k-images-idx3-ubyte.gz").shape == (10000, 28, 28)
    images, labels = load_idx_split(directory, "test")
    assert images.shape == (10000, 1, 28, 28)
    assert images.dtype == torch.uint8
    assert int(images.max()) == 255
    assert labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [1000] * 10
    again, _ = load_idx_split(directory, "test")
    assert again.data_ptr() == images.data_ptr()  # decoded once, then cached
