"""Reader for the IDX format of MNIST-style datasets (plain or gzip-compressed).

The offline dataset copies are IDX files, and torchvision cannot be used to read them without its
own directory layout and checksums (the Fashion-MNIST copies were re-compressed, so torchvision's
MD5 list rejects them). Decoding is one ``np.frombuffer`` per file, so a 60000-image set loads in
well under a second.

IDX layout: bytes 0-1 are zero, byte 2 is the element type code, byte 3 the number of dimensions
``ndim``; then ``ndim`` big-endian uint32 sizes; then the elements, row-major.
"""

import gzip
import os
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike[str]]  # noqa: UP007  (a runtime alias: no | before 3.10)
Split = Literal["train", "test"]

_GZIP_MAGIC = b"\x1f\x8b"
_UINT8_CODE = 0x08
_OTHER_TYPE_CODES = {
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


def read_idx(path: PathLike) -> np.ndarray:
    """Read one IDX file into a writable uint8 array shaped as its header says.

    Gzip is detected from the file's first two bytes, not its name, because copies are often
    renamed or decompressed without renaming. Only unsigned-byte data (type code 0x08) is accepted:
    every image/label file of the supported datasets uses it, and silently widening other types
    would hide a wrong file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(
                f"{path} starts like a gzip file but cannot be decompressed ({exc}); it is "
                "probably truncated or corrupt. Copy or download it again."
            ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file: its first bytes are {raw[:4].hex(' ') or 'empty'}, but "
            "an IDX file starts with 00 00, a type code and the number of dimensions (e.g. "
            "00 00 08 03 for uint8 images). Point the dataset path at the IDX image/label files."
        )
    type_code, ndim = raw[2], raw[3]
    if type_code != _UINT8_CODE:
        found = _OTHER_TYPE_CODES.get(type_code)
        if found is None:
            raise ValueError(
                f"{path} is not an IDX file: type code 0x{type_code:02x} is not one of the IDX "
                "codes 0x08, 0x09, 0x0b-0x0e. Point the dataset path at the IDX image/label files."
            )
        raise ValueError(
            f"{path} holds {found} data (IDX type code 0x{type_code:02x}), but only unsigned-byte "
            "data (0x08) is supported, as used by MNIST-style image and label files. Convert the "
            "data to uint8 (e.g. into an .npz source) instead."
        )
    if ndim == 0:
        raise ValueError(
            f"{path} declares 0 dimensions; an IDX image or label file has at least one. The file "
            "is corrupt: copy or download it again."
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"{path} is truncated: its header declares {ndim} dimensions ({header_size} header "
            f"bytes) but the file has only {len(raw)} bytes. Copy or download it again."
        )
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header_size + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(
            f"{path} is {problem}: the header declares shape {shape}, i.e. {expected} bytes "
            f"including the header, but the (decompressed) file has {len(raw)} bytes. Copy or "
            "download it again."
        )
    # bytearray makes the buffer writable, so torch.from_numpy shares it without a warning.
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=header_size).reshape(shape)


def load_idx_split(directory: PathLike, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``(images uint8 [N,1,H,W], labels int64 [N])`` of one split from an IDX directory.

    File names follow the MNIST convention (``train-`` / ``t10k-`` or ``test-`` prefix, optional
    ``.gz``). Results are cached per file (path, size and modification time), so an inlier and an
    outlier spec that point at the same files, or repeated ``setup()`` calls, decode once; callers
    must treat the returned tensors as read-only.
    """
    if split not in _SPLIT_PREFIXES:
        raise ValueError(f"split must be 'train' or 'test' (got {split!r}).")
    directory = Path(directory)
    images = _cached_read(_find_file(directory, split, "images-idx3-ubyte"))
    labels = _cached_read(_find_file(directory, split, "labels-idx1-ubyte"))
    if images.ndim != 3:
        raise ValueError(
            f"The {split} image file in {directory} has shape {images.shape}; IDX image files must "
            "be 3-dimensional (N, H, W). Check that the images and labels files are not swapped."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"The {split} label file in {directory} has shape {labels.shape}, but "
            f"{images.shape[0]} images need a 1-dimensional label file of the same length. The "
            "two files belong to different datasets or one is corrupt."
        )
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


def idx_split_exists(directory: PathLike, split: Split) -> bool:
    """Whether ``directory`` holds the image and label files of ``split`` (used to pick sources)."""
    directory = Path(directory)
    return all(
        any((directory / name).is_file() for name in _candidate_names(split, kind))
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )


def _candidate_names(split: Split, kind: str) -> list[str]:
    return [f"{prefix}-{kind}{suffix}" for prefix in _SPLIT_PREFIXES[split] for suffix in ("", ".gz")]


def _find_file(directory: Path, split: Split, kind: str) -> Path:
    names = _candidate_names(split, kind)
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"No {split} {kind.split('-')[0]} file in {directory}: looked for {', '.join(names)}. "
        "Point the path (or DATA_DIR / data.data_dir) at a directory holding the IDX files."
    )


def _cached_read(path: Path) -> np.ndarray:
    stat = path.stat()
    return _read_idx_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _read_idx_cached(path: str, size: int, mtime_ns: int) -> np.ndarray:
    # size and mtime_ns are only cache-key parts: a rewritten file is read again.
    del size, mtime_ns
    return read_idx(path)
