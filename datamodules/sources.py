"""Resolve dataset specs (``data.inlier`` / ``data.outliers`` entries) to in-memory uint8 tensors.

Every source, whatever its origin, ends up as an :class:`ImageSet`: ``images`` uint8
``[N, C, H, W]`` and ``labels`` int64 ``[N]`` (-1 where unknown). Holding everything as tensors
lets the data loaders slice whole batches at once instead of decoding images one by one.

A spec is resolved in this order:

1. ``name=source`` sets the display name (the key of the set in metrics and ``scores.npz``) of any
   source below; without it the name is the transform name, the dataset's canonical name, or the
   file/directory name.
2. An outlier transform of the inlier test set (outliers only): see
   :data:`datamodules.transforms.OUTLIER_TRANSFORMS`.
3. A path (it contains a path separator or exists; relative to the working directory):

   - a directory of IDX files (``train-`` / ``t10k-`` or ``test-`` prefixed
     ``images-idx3-ubyte[.gz]`` / ``labels-idx1-ubyte[.gz]``);
   - an ``.npz`` file (``allow_pickle`` off) with a uint8 array ``images`` and optional integer
     ``labels`` of the same length; an inlier needs ``train_images`` and ``test_images`` (with
     optional ``train_labels`` / ``test_labels``) instead, and an outlier uses ``test_images`` when
     present. Accepted image layouts: ``(N, H, W)`` grey, ``(N, H, W, C)`` or ``(N, C, H, W)``
     with C in {1, 3}; channels-last wins when the last axis has 1 or 3 entries;
   - an image folder in torchvision ``ImageFolder`` layout (``root/<class>/<image>``), decoded once
     with PIL; an inlier needs ``train/`` and ``test/`` subfolders in that layout, an outlier uses
     ``test/`` when present and the folder itself otherwise. All images must share one size.

4. A torchvision dataset name (case, ``-`` and ``_`` ignored): see :data:`NAMED_DATASETS`. An
   offline IDX copy in ``<data_dir>/<folder>`` is preferred; otherwise the torchvision class reads
   ``data_dir`` in its own layout.
"""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules.idx import Split, idx_split_exists, load_idx_split
from datamodules.transforms import OUTLIER_TRANSFORMS

Role = Literal["inlier", "outlier"]
SourceKind = Literal["transform", "path", "named"]
Shape = tuple[int, int, int]

_GREY_MODES = ("1", "L")
# ITU-R BT.601 luma weights, the ones PIL uses for RGB -> "L".
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Images converted per step in resize / channel conversion, bounding the float32 working memory.
_CONVERT_CHUNK = 4096


@dataclass(frozen=True)
class ImageSet:
    """One dataset split held in memory; ``name`` is its display name."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"Dataset {self.name!r} produced images of dtype {self.images.dtype} and shape "
                f"{tuple(self.images.shape)}; a source must yield uint8 [N, C, H, W]."
            )
        if len(self.images) == 0:
            raise ValueError(
                f"Dataset {self.name!r} holds no images; check the path or spec that defines it."
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(
                f"Dataset {self.name!r} has {len(self.images)} images but labels of shape "
                f"{tuple(self.labels.shape)}; it needs exactly one label per image."
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> Shape:
        """Per-image shape ``(C, H, W)``."""
        channels, height, width = self.images.shape[1:]
        return (channels, height, width)

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        """Copy of the images and labels at ``indices`` (an int64 tensor)."""
        return ImageSet(self.name, self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class SourceSpec:
    """A parsed spec: display ``name``, how to load it (``kind``) and from what (``target``)."""

    name: str
    kind: SourceKind
    target: str


@dataclass(frozen=True)
class NamedDataset:
    """How to find one torchvision dataset, offline copy first.

    ``make(root, split, download)`` builds the torchvision dataset object; ``extract`` turns it
    into ``(images, labels)`` tensors. ``shape`` / ``num_classes`` are the known values, so the
    data module can report them before loading anything.
    """

    name: str
    torchvision_class: str
    torchvision_layout: str
    make: Callable[[str, Split, bool], Any]
    extract: Callable[[Any], tuple[torch.Tensor, torch.Tensor]]
    shape: Shape
    num_classes: int
    idx_folder: str | None = None
    transposed: bool = False
    hint: str = ""


def _to_nchw(images: torch.Tensor, where: str) -> torch.Tensor:
    """Bring ``(N,H,W)``, ``(N,H,W,C)`` or ``(N,C,H,W)`` (C in {1, 3}) to contiguous NCHW."""
    if images.dtype != torch.uint8:
        raise ValueError(
            f"{where} holds {images.dtype} images, but sources must be uint8 in [0, 255]; convert "
            "them first, e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]."
        )
    if images.ndim == 3:
        return images.unsqueeze(1).contiguous()
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        return images.permute(0, 3, 1, 2).contiguous()
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images.contiguous()
    raise ValueError(
        f"{where} holds images of shape {tuple(images.shape)}; accepted layouts are (N, H, W), "
        "(N, H, W, C) and (N, C, H, W) with C = 1 (grey) or 3 (RGB)."
    )


def _labels_tensor(labels: Any, count: int, where: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(labels))
    if tensor.shape != (count,) or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(
            f"{where} has labels of dtype {tensor.dtype} and shape {tuple(tensor.shape)}; labels "
            f"must be integers, one per image ({count}). Drop them to mark labels as unknown (-1)."
        )
    return tensor.long()


def _stack_arrays(arrays: list[np.ndarray], where: str) -> torch.Tensor:
    """Stack decoded images (HxW grey or HxWx3 RGB) into NCHW; grey becomes RGB if any is RGB."""
    if any(array.ndim == 3 for array in arrays):
        arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
    sizes = sorted({array.shape[:2] for array in arrays})
    if len(sizes) > 1:
        raise ValueError(
            f"{where} contains images of different sizes (HxW {sizes[0]} and {sizes[-1]}, among "
            f"{len(sizes)} sizes); image sources must share one size. Resize them offline first."
        )
    return _to_nchw(torch.from_numpy(np.stack(arrays)), where)


def _decode(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L" if image.mode in _GREY_MODES else "RGB"))


def _load_image_folder(root: Path, source: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``root`` in ImageFolder layout; ``source`` is the path the spec gave (for messages)."""
    try:
        folder = tvd.ImageFolder(str(root))
    except FileNotFoundError as error:
        raise ValueError(_no_images_message(root, source, error)) from None
    arrays = [_decode_file(Path(path)) for path, _ in folder.samples]
    images = _stack_arrays(arrays, f"Image folder {root}")
    return images, torch.tensor(folder.targets, dtype=torch.int64)


def _decode_file(path: Path) -> np.ndarray:
    """One image file, or an error that names it: PIL's own errors do not say which file failed."""
    try:
        with Image.open(path) as image:
            return _decode(image)
    # PIL reports unreadable image data as OSError (UnidentifiedImageError, truncated data),
    # SyntaxError (broken PNG chunks) or ValueError, and too large images as DecompressionBombError.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(
            f"Image file {path} cannot be read as an image ({type(error).__name__}: {error}). Every file "
            f"with an image extension in an image folder is decoded; replace the file with a complete "
            f"image or delete it (a corrupt or truncated copy, or a file that is not an image at all)."
        ) from None


def _no_images_message(root: Path, source: Path, error: FileNotFoundError) -> str:
    """torchvision's message names neither the accepted layouts nor the usual slip (loose images)."""
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    loose_hint = (
        f" The images directly in {root} ({', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}) are "
        f"not read: move them into a class subfolder, e.g. {root / 'all'}/."
        if loose
        else ""
    )
    return (
        f"Dataset folder {source} holds no images ({str(error).rstrip('.')}).{loose_hint} A dataset "
        f"folder must be one of: a directory of IDX files (train-/t10k- or test- prefixed "
        f"images-idx3-ubyte[.gz] and labels-idx1-ubyte[.gz]); or an image folder in ImageFolder layout, "
        f"<folder>/<class>/<image> with extensions {', '.join(IMG_EXTENSIONS)} (an outlier reads "
        f"<folder>/test/ when it exists, <folder> itself otherwise; an inlier needs train/ and test/ "
        f"subfolders in that layout). Other forms: an .npz file, a dataset name or, for outliers, a "
        f"transform of the inlier test set."
    )


def _load_npz(path: Path, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if f"{split}_images" in keys:
            image_key, label_key = f"{split}_images", f"{split}_labels"
        elif split == "test" and "images" in keys:
            image_key, label_key = "images", "labels"
        else:
            wanted = "'train_images' and 'test_images'" if split == "train" else "'images'"
            raise ValueError(
                f"{path} has arrays {keys}, but a {split} split needs {wanted} (with optional "
                "labels arrays). An inlier .npz needs both splits; an outlier .npz needs 'images'."
            )
        where = f"{path} array {image_key!r}"
        images = _to_nchw(torch.from_numpy(archive[image_key]), where)
        if label_key in keys:
            labels = _labels_tensor(archive[label_key], len(images), f"{path} array {label_key!r}")
        else:
            labels = torch.full((len(images),), -1, dtype=torch.int64)
    return images, labels


def _load_path(path: Path, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.exists():
        raise FileNotFoundError(
            f"Dataset path {path} does not exist (resolved to {path.resolve()}); relative paths "
            "start from the working directory. Fix the path, or use a dataset name or transform."
        )
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(
                f"Dataset path {path} is a file but not an .npz archive; a path source must be an "
                ".npz file, a directory of IDX files or an image folder."
            )
        return _load_npz(path, split)
    if any(path.glob("*-images-idx3-ubyte*")):
        return load_idx_split(path, split)
    if (path / split).is_dir():
        return _load_image_folder(path / split, path)
    if split == "test":
        return _load_image_folder(path, path)
    raise ValueError(
        f"Image folder {path} has no 'train' subfolder; as an inlier it needs train/ and test/ "
        "subfolders, each in ImageFolder layout (<class>/<image>)."
    )


def _make_with_train_flag(cls: type, root: str, split: Split, download: bool) -> Any:
    return cls(root, train=split == "train", download=download)


def _make_with_split(cls: type, root: str, split: Split, download: bool) -> Any:
    return cls(root, split=split, download=download)


def _make_emnist(root: str, split: Split, download: bool) -> Any:
    return tvd.EMNIST(root, split="letters", train=split == "train", download=download)


def _make_omniglot(root: str, split: Split, download: bool) -> Any:
    # Omniglot's "background" alphabets are its training set, "evaluation" alphabets its test set.
    return tvd.Omniglot(root, background=split == "train", download=download)


def _make_celeba(root: str, split: Split, download: bool) -> Any:
    # No target: CelebA has attributes / identities, not a class label.
    return tvd.CelebA(root, split=split, target_type=[], download=download)


def _extract_arrays(dataset: Any, label_attribute: str = "targets") -> tuple[torch.Tensor, torch.Tensor]:
    """Use the ``data`` array the class already holds in memory: no per-sample PIL decoding."""
    data = dataset.data
    images = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
    where = f"torchvision {type(dataset).__name__}"
    images = _to_nchw(images, where)
    return images, _labels_tensor(getattr(dataset, label_attribute), len(images), where)


def _extract_by_iteration(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every sample once, for classes that keep only file names in memory."""
    arrays, labels = [], []
    for image, target in dataset:
        arrays.append(_decode(image))
        labels.append(target if isinstance(target, int) else -1)
    images = _stack_arrays(arrays, f"torchvision {type(dataset).__name__}")
    return images, torch.tensor(labels, dtype=torch.int64)


NAMED_DATASETS: dict[str, NamedDataset] = {
    entry.name: entry
    for entry in (
        NamedDataset(
            "mnist",
            "MNIST",
            "MNIST/raw",
            partial(_make_with_train_flag, tvd.MNIST),
            _extract_arrays,
            (1, 28, 28),
            10,
            idx_folder="mnist",
        ),
        NamedDataset(
            "fashion_mnist",
            "FashionMNIST",
            "FashionMNIST/raw",
            partial(_make_with_train_flag, tvd.FashionMNIST),
            _extract_arrays,
            (1, 28, 28),
            10,
            idx_folder="fashion-mnist",
            hint="On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` installs the IDX "
            "files; then set DATA_DIR=/usr/share/datasets.",
        ),
        NamedDataset(
            "kmnist",
            "KMNIST",
            "KMNIST/raw",
            partial(_make_with_train_flag, tvd.KMNIST),
            _extract_arrays,
            (1, 28, 28),
            10,
            idx_folder="kmnist",
        ),
        # EMNIST stores its images transposed relative to MNIST; they are turned upright on load.
        NamedDataset(
            "emnist",
            "EMNIST",
            "EMNIST/raw",
            _make_emnist,
            _extract_arrays,
            (1, 28, 28),
            27,
            idx_folder="emnist",
            transposed=True,
        ),
        NamedDataset(
            "cifar10",
            "CIFAR10",
            "cifar-10-batches-py",
            partial(_make_with_train_flag, tvd.CIFAR10),
            _extract_arrays,
            (3, 32, 32),
            10,
        ),
        NamedDataset(
            "svhn",
            "SVHN",
            "train_32x32.mat / test_32x32.mat",
            partial(_make_with_split, tvd.SVHN),
            partial(_extract_arrays, label_attribute="labels"),
            (3, 32, 32),
            10,
        ),
        NamedDataset(
            "omniglot",
            "Omniglot",
            "omniglot-py",
            _make_omniglot,
            _extract_by_iteration,
            (1, 105, 105),
            964,
        ),
        NamedDataset(
            "celeba",
            "CelebA",
            "celeba",
            _make_celeba,
            _extract_by_iteration,
            (3, 218, 178),
            0,
        ),
    )
}
_ALIASES = {"fmnist": "fashion_mnist"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


_NAME_LOOKUP = {
    **{_normalise(name): name for name in NAMED_DATASETS},
    **{_normalise(alias): name for alias, name in _ALIASES.items()},
}
_TRANSFORM_LOOKUP = {_normalise(name): name for name in OUTLIER_TRANSFORMS}


def _looks_like_path(text: str) -> bool:
    separators = {separator for separator in ("/", os.sep, os.altsep) if separator is not None}
    if not text:
        return False
    return any(sep in text for sep in separators) or Path(text).expanduser().exists()


def _forms_help() -> str:
    aliases = ", ".join(f"{alias} = {name}" for alias, name in _ALIASES.items())
    return (
        f"Valid dataset names: {', '.join(sorted(NAMED_DATASETS))} (case, '-' and '_' are "
        f"ignored; {aliases}). Other forms: a path to an IDX directory, an .npz file or an image "
        "folder (it must contain a path separator or exist, e.g. ./cifar.npz); for outliers, a "
        f"transform of the inlier test set: {', '.join(OUTLIER_TRANSFORMS)}. Prefix any of them "
        "with 'name=' to choose the display name."
    )


def parse_spec(spec: str, role: Role) -> SourceSpec:
    """Parse one ``data.inlier`` / ``data.outliers`` entry without loading data.

    Pure and cheap, so the data module can validate specs and report display names at
    construction time, long before the (possibly slow) load in ``setup()``.
    """
    where = "data.inlier" if role == "inlier" else "data.outliers"
    text = spec.strip()
    label, has_name, rest = text.partition("=")
    explicit_name: str | None = None
    kind: SourceKind
    if has_name and not _looks_like_path(label):
        explicit_name, text = label.strip(), rest.strip()
        if not explicit_name or not text:
            raise ValueError(
                f"Spec {spec!r} in {where} is malformed: 'name=source' needs a non-empty "
                "name and source, e.g. 'digits=mnist'."
            )
    if _normalise(text) in _TRANSFORM_LOOKUP:
        if role == "inlier":
            raise ValueError(
                f"data.inlier={spec!r} is an outlier transform, which is made from the inlier test "
                "set and so cannot be the inlier itself. Name the inlier dataset, e.g. "
                "data.inlier=fashion_mnist, and list the transform in data.outliers."
            )
        kind = "transform"
        target = default_name = _TRANSFORM_LOOKUP[_normalise(text)]
    elif _looks_like_path(text):
        resolved = Path(text).expanduser().resolve()
        npz = resolved.suffix.lower() == ".npz"
        kind, target, default_name = "path", text, resolved.stem if npz else resolved.name
    elif _normalise(text) in _NAME_LOOKUP:
        kind = "named"
        target = default_name = _NAME_LOOKUP[_normalise(text)]
    else:
        raise ValueError(f"Unknown dataset {text!r} in {where}. {_forms_help()}")
    return SourceSpec(explicit_name or default_name, kind, target)


def known_shape_and_classes(spec: SourceSpec) -> tuple[Shape, int] | None:
    """Documented ``(shape, num_classes)`` of a named dataset; None when only loading tells."""
    if spec.kind != "named":
        return None
    entry = NAMED_DATASETS[spec.target]
    return entry.shape, entry.num_classes


def load_source(spec: SourceSpec, split: Split, data_dir: str, download: bool) -> ImageSet:
    """Load ``split`` of a path or named source (transforms are built by the data module).

    ``download`` only changes the advice in the not-found error: downloads belong to
    ``prepare_data()``, which runs once per node, while this runs on every process.
    """
    if spec.kind == "path":
        images, labels = _load_path(Path(spec.target).expanduser(), split)
    elif spec.kind == "named":
        images, labels = _load_named(NAMED_DATASETS[spec.target], split, data_dir, download)
    else:
        raise ValueError(f"Spec {spec.name!r} is a transform; the data module builds it.")
    return ImageSet(spec.name, images, labels)


def download_source(spec: SourceSpec, split: Split, data_dir: str) -> None:
    """Download ``split`` of a named source through torchvision unless an offline copy exists."""
    if spec.kind != "named":
        return
    entry = NAMED_DATASETS[spec.target]
    if entry.idx_folder is not None and idx_split_exists(Path(data_dir) / entry.idx_folder, split):
        return
    entry.make(data_dir, split, True)


def _load_named(
    entry: NamedDataset, split: Split, data_dir: str, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    searched = []
    if entry.idx_folder is not None:
        folder = Path(data_dir) / entry.idx_folder
        if idx_split_exists(folder, split):
            images, labels = load_idx_split(folder, split)
            return (images.transpose(-1, -2).contiguous() if entry.transposed else images), labels
        searched.append(
            f"(1) an offline IDX copy in {folder}/ (files {split if split == 'train' else 't10k'}"
            "-images-idx3-ubyte[.gz] and -labels-idx1-ubyte[.gz])"
        )
    try:
        dataset = entry.make(data_dir, split, False)
    except (RuntimeError, OSError) as exc:
        searched.append(
            f"({len(searched) + 1}) torchvision {entry.torchvision_class} in its own layout under "
            f"{data_dir} ({entry.torchvision_layout}), which said: {exc}"
        )
        advice = (
            "data.download is already true, so call prepare_data() before setup() (the Trainer "
            "does), on a machine with network access"
            if download
            else "on a machine with network access, set data.download=true"
        )
        raise FileNotFoundError(
            f"Dataset {entry.name!r} ({split} split) was not found. Searched "
            f"{'; '.join(searched)}. "
            f"Fix: set DATA_DIR or data.data_dir to the directory that holds it; or, {advice}. "
            f"{entry.hint}".strip()
        ) from exc
    images, labels = entry.extract(dataset)
    return (images.transpose(-1, -2).contiguous() if entry.transposed else images), labels


def convert_images(images: torch.Tensor, image_size: int | None, channels: int | None) -> torch.Tensor:
    """Apply the configured channel conversion and square resize; a no-op where nothing differs.

    Channels are converted first so RGB -> grey resizes one plane instead of three. The resize is
    antialiased bilinear interpolation on floats, rounded back to uint8; non-square images are
    stretched to the square size.
    """
    if channels is not None and images.shape[1] != channels:
        images = _chunked(images, _to_grey if channels == 1 else _to_rgb)
    if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
        images = _chunked(images, partial(_resize, size=image_size))
    return images


def _chunked(images: torch.Tensor, convert: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return torch.cat([convert(chunk) for chunk in images.split(_CONVERT_CHUNK)])


def _to_rgb(images: torch.Tensor) -> torch.Tensor:
    return images.repeat(1, 3, 1, 1)


def _to_grey(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_LUMA_WEIGHTS).view(1, 3, 1, 1)
    grey = (images.float() * weights).sum(dim=1, keepdim=True)
    return grey.round_().clamp_(0, 255).to(torch.uint8)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    resized = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def check_same_shape(inlier: ImageSet, other: ImageSet, other_role: str = "Outlier set") -> None:
    """Raise when ``other`` does not match the inlier's ``(C, H, W)``, naming both and the fix."""
    if other.shape == inlier.shape:
        return
    channels, height, _ = inlier.shape
    raise ValueError(
        f"{other_role} {other.name!r} has images of shape (C, H, W) = {other.shape}, but inlier "
        f"set {inlier.name!r} has {inlier.shape}; inlier and outlier images must agree in channels "
        f"and size. Set data.image_size (e.g. data.image_size={height}) to resize and/or "
        f"data.channels (e.g. data.channels={channels}) to convert every dataset, or choose "
        "datasets that match."
    )
