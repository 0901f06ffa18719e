"""Lightning DataModule pairing one inlier dataset with any number of outlier sets.

Training sees only the inlier train split. Validation and test loaders are lists, first the inlier
split, then every outlier set, in the order of :attr:`OODDataModule.eval_set_names`, so an
evaluation callback can tell the sets apart by ``dataloader_idx``. Batches are ``(x, y, index)``;
``index`` is the sample's position in its set, which lets a DDP callback drop the duplicates the
distributed sampler pads in.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from datamodules.config import DataConfig, resolve_data_config
from datamodules.sources import (
    ImageSet,
    Shape,
    SourceSpec,
    check_same_shape,
    convert_images,
    download_source,
    known_shape_and_classes,
    load_source,
    parse_spec,
)
from datamodules.transforms import make_transform_outlier

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ImageTensorDataset(Dataset[Batch]):
    """Serves an :class:`ImageSet` as ``(x float32 in [0, 1], y int64, index int64)``.

    ``__getitems__`` makes the DataLoader fetch a whole batch with one tensor index and convert it
    to float once, instead of building and stacking one sample at a time; use it with
    :func:`collate_batch`, which passes that ready batch through.
    """

    def __init__(self, image_set: ImageSet) -> None:
        self.name = image_set.name
        self.images = image_set.images
        self.labels = image_set.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Batch:
        position = range(len(self))[index]  # normalises negative indices, raises IndexError
        x = self.images[position].float().div_(255.0)
        return x, self.labels[position], torch.tensor(position, dtype=torch.int64)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[index].float().div_(255.0), self.labels[index], index


def collate_batch(batch: Any) -> Batch:
    """Collate function for :class:`ImageTensorDataset`: its batches arrive already stacked.

    Typed ``Any`` in because torch's ``collate_fn`` type assumes a list of samples, which
    ``__getitems__`` replaces with the ready ``(x, y, index)`` batch.
    """
    return batch


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(train, val)`` index split of ``count`` samples, each in ascending order.

    Depends only on ``(count, val_fraction, seed)``, so every process and every rerun holds out
    the same validation images.
    """
    val_count = round(count * val_fraction)
    if not 0 < val_count < count:
        raise ValueError(
            f"data.val_fraction={val_fraction} of {count} training images leaves {val_count} for "
            f"validation and {count - val_count} for training; both need at least one. Choose a "
            "val_fraction that splits the inlier training set, or use a larger dataset."
        )
    held_out = _selection_mask(_permutation(count, seed)[:val_count], count)
    return (~held_out).nonzero().squeeze(1), held_out.nonzero().squeeze(1)


def seeded_subset(count: int, limit: int | None, seed: int) -> torch.Tensor:
    """Ascending positions of a seeded subset of at most ``limit`` of ``count`` samples.

    Depends only on ``(count, limit, seed)``: two sets of equal size (the inlier test set and a
    flipped copy of it) keep the same positions, so they stay aligned.
    """
    if limit is None or count <= limit:
        return torch.arange(count)
    return _selection_mask(_permutation(count, seed)[:limit], count).nonzero().squeeze(1)


def cap_samples(image_set: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """``image_set`` reduced to :func:`seeded_subset`; unchanged (not copied) when within limit."""
    if limit is None or len(image_set) <= limit:
        return image_set
    return image_set.subset(seeded_subset(len(image_set), limit, seed))


def _permutation(count: int, seed: int) -> torch.Tensor:
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))


def _selection_mask(chosen: torch.Tensor, count: int) -> torch.Tensor:
    # A mask puts the chosen positions back in ascending order in O(count), without a sort.
    mask = torch.zeros(count, dtype=torch.bool)
    mask[chosen] = True
    return mask


@dataclass(frozen=True)
class _LoadedData:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    outliers: list[ImageSet]


class OODDataModule(pl.LightningDataModule):
    """Inlier train / val / test splits plus outlier test sets, all held in memory.

    Built from a :class:`DataConfig`, an OmegaConf node of it (``cfg.data``) or a plain mapping.
    Specs are parsed at construction, so unknown names and duplicate display names fail at once;
    images are loaded in :meth:`setup` (once, later calls are no-ops) and downloaded, when
    ``data.download`` is true, in :meth:`prepare_data`. All randomness comes from
    ``data.split_seed`` and ``data.noise_seed``, except the training shuffle order, which follows
    the global seed (``seed_everything``) so that repeated runs with different seeds differ. The
    evaluation loaders never draw from the global RNG, so which sets are evaluated cannot change
    training.
    """

    def __init__(self, cfg: DataConfig | DictConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.cfg = resolve_data_config(cfg)
        self._inlier_spec = parse_spec(self.cfg.inlier, "inlier")
        self._outlier_specs = [parse_spec(spec, "outlier") for spec in self.cfg.outliers]
        self._check_unique_names()
        self._data: _LoadedData | None = None

    @property
    def eval_set_names(self) -> list[str]:
        """Display names in loader order: the inlier set first, then the outlier sets."""
        return [self._inlier_spec.name, *self.outlier_names]

    @property
    def outlier_names(self) -> list[str]:
        """Display names of the outlier sets, in ``data.outliers`` order."""
        return [spec.name for spec in self._outlier_specs]

    @property
    def image_shape(self) -> Shape:
        """``(C, H, W)`` of every batch; known before :meth:`setup` for named inlier datasets."""
        if self._data is not None:
            return self._data.train.shape
        channels, height, width = self._known()[0]
        size = self.cfg.image_size
        return (self.cfg.channels or channels, size or height, size or width)

    def prepare_data(self) -> None:
        """Download named datasets through torchvision when ``data.download`` is true.

        Lightning runs this on one process per node, so concurrent processes never download into
        the same folder; without ``data.download`` it does nothing.
        """
        if not self.cfg.download:
            return
        for split in ("train", "test"):
            download_source(self._inlier_spec, split, self.cfg.data_dir)
        for spec in self._outlier_specs:
            download_source(spec, "test", self.cfg.data_dir)

    def setup(self, stage: str | None = None) -> None:
        """Load every set, whatever the stage: validation already needs the outliers."""
        if self._data is None:
            self._data = self._load()

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._loaded().train, self.cfg.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        data = self._loaded()
        return [self._eval_loader(image_set) for image_set in (data.val, *data.outliers)]

    def test_dataloader(self) -> list[DataLoader]:
        data = self._loaded()
        return [self._eval_loader(image_set) for image_set in (data.test, *data.outliers)]

    def reference_dataloader(self) -> DataLoader:
        """The inlier train split in a fixed order, to build the hole-score reference latents."""
        return self._eval_loader(self._loaded().train)

    def _eval_loader(self, image_set: ImageSet) -> DataLoader:
        # Every iteration of a DataLoader draws a worker base seed from its generator, by default
        # the global RNG that also drives the training steps. Validation iterates one loader per
        # outlier set (in the sanity check and between epochs), so without a generator of its own
        # the list of evaluated sets would change the trained weights.
        generator = torch.Generator().manual_seed(self.cfg.split_seed)
        return self._loader(image_set, self.cfg.eval_batch_size, shuffle=False, generator=generator)

    def _loader(
        self, image_set: ImageSet, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
    ) -> DataLoader:
        return DataLoader(
            ImageTensorDataset(image_set),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.cfg.num_workers,
            # torch types collate_fn as taking a list of samples; __getitems__ hands it the batch.
            collate_fn=collate_batch,
            generator=generator,
        )

    def _loaded(self) -> _LoadedData:
        if self._data is None:
            raise RuntimeError(
                "OODDataModule has no data yet: call setup() (the Trainer does) before asking "
                "for data loaders."
            )
        return self._data

    def _known(self) -> tuple[Shape, int]:
        known = known_shape_and_classes(self._inlier_spec)
        if known is None:
            raise RuntimeError(
                f"The inlier {self._inlier_spec.name!r} is a {self._inlier_spec.kind} source, "
                "whose image shape and classes are known only after loading: call setup() first."
            )
        return known

    def _check_unique_names(self) -> None:
        names = self.eval_set_names
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"Display names must be unique, but {duplicates} occur more than once among the "
                f"inlier {names[0]!r} and the outliers {names[1:]}; they key the metrics and "
                "scores. Name entries explicitly with 'name=source', e.g. 'mnist_2=mnist'."
            )

    def _load(self) -> _LoadedData:
        cfg = self.cfg
        data_dir, download, seed = cfg.data_dir, cfg.download, cfg.split_seed
        full_train = load_source(self._inlier_spec, "train", data_dir, download)
        train_index, val_index = split_indices(len(full_train), cfg.val_fraction, seed)
        # Capping the index lists first copies only the images that are kept.
        train_index = train_index[seeded_subset(len(train_index), cfg.max_train_samples, seed)]
        val_index = val_index[seeded_subset(len(val_index), cfg.max_eval_samples, seed)]
        train, val = full_train.subset(train_index), full_train.subset(val_index)
        test = cap_samples(
            load_source(self._inlier_spec, "test", data_dir, download), cfg.max_eval_samples, seed
        )
        # Capped before converting, so quick capped runs convert only what they use.
        train, val, test = (self._convert(image_set) for image_set in (train, val, test))
        check_same_shape(train, test, other_role="Inlier test split of")
        outliers = [self._load_outlier(spec, test) for spec in self._outlier_specs]
        return _LoadedData(train, val, test, outliers)

    def _load_outlier(self, spec: SourceSpec, inlier_test: ImageSet) -> ImageSet:
        if spec.kind == "transform":
            images, labels = make_transform_outlier(
                spec.target, inlier_test.images, inlier_test.labels, self.cfg.noise_seed
            )
            return ImageSet(spec.name, images, labels)
        loaded = load_source(spec, "test", self.cfg.data_dir, self.cfg.download)
        outlier = self._convert(cap_samples(loaded, self.cfg.max_eval_samples, self.cfg.split_seed))
        check_same_shape(inlier_test, outlier)
        return outlier

    def _convert(self, image_set: ImageSet) -> ImageSet:
        images = convert_images(image_set.images, self.cfg.image_size, self.cfg.channels)
        return ImageSet(image_set.name, images, image_set.labels)
