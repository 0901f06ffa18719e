"""Data for outlier detection: one inlier dataset plus outlier sets, held in memory as tensors."""

from datamodules.config import DataConfig, resolve_data_config, validate
from datamodules.idx import load_idx_split, read_idx
from datamodules.ood_datamodule import (
    ImageTensorDataset,
    OODDataModule,
    cap_samples,
    collate_batch,
    seeded_subset,
    split_indices,
)
from datamodules.sources import (
    NAMED_DATASETS,
    ImageSet,
    SourceSpec,
    check_same_shape,
    convert_images,
    load_source,
    parse_spec,
)
from datamodules.transforms import OUTLIER_TRANSFORMS, make_transform_outlier

__all__ = [
    "NAMED_DATASETS",
    "OUTLIER_TRANSFORMS",
    "DataConfig",
    "ImageSet",
    "ImageTensorDataset",
    "OODDataModule",
    "SourceSpec",
    "cap_samples",
    "check_same_shape",
    "collate_batch",
    "convert_images",
    "load_idx_split",
    "load_source",
    "make_transform_outlier",
    "parse_spec",
    "read_idx",
    "resolve_data_config",
    "seeded_subset",
    "split_indices",
    "validate",
]
