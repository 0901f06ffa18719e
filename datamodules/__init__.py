"""Data for outlier detection: one inlier dataset plus outlier sets, held in memory as tensors.

The names below are imported lazily, so that ``datamodules.config`` (validated by every entry
point before any work) does not import torch or Lightning.
"""

from __future__ import annotations

from common.lazy import lazy_exports

_PUBLIC = {
    "DataConfig": "datamodules.config",
    "OODDataModule": "datamodules.ood_datamodule",
    "ResumableDataModule": "datamodules.resumable",
    "ImageSet": "datamodules.sources",
    "NAMED_DATASETS": "datamodules.sources",
    "OUTLIER_TRANSFORMS": "datamodules.transforms",
}
__all__ = sorted(_PUBLIC)

__getattr__ = lazy_exports(__name__, _PUBLIC)
