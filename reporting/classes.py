"""Names of the inlier classes, so figures say "Sandal" rather than 5.

The evaluation only carries integer labels; the names come from torchvision for the named
datasets the data module knows (``data.inlier``, read from the run's resolved config). Any other
source (a path, an image folder) has no trustworthy names, and its classes keep their numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torchvision.datasets as tvd

from datamodules.sources import parse_spec

# CIFAR10 reads its names from the downloaded batches.meta file; these are that file's names.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Canonical dataset name (datamodules.sources.NAMED_DATASETS) -> its class names by label. EMNIST
# inherits MNIST's digit names; the data module loads its "letters" split (labels 1-26, 0 unused).
CLASS_NAMES: Mapping[str, Callable[[], list[str]]] = {
    "mnist": lambda: list(tvd.MNIST.classes),
    "fashion_mnist": lambda: list(tvd.FashionMNIST.classes),
    "kmnist": lambda: list(tvd.KMNIST.classes),
    "emnist": lambda: list(tvd.EMNIST.classes_split_dict["letters"]),
    "cifar10": lambda: list(CIFAR10_CLASSES),
}


def inlier_class_names(run_info: Mapping[str, Any]) -> list[str] | None:
    """Class names of the run's inlier set by label, or None when its classes have no known names."""
    config = run_info.get("config") or {}
    spec = (config.get("data") or {}).get("inlier")
    if not isinstance(spec, str):
        return None
    try:
        source = parse_spec(spec, "inlier")
    except ValueError:  # a spec the data module would refuse cannot have been the run's inlier
        return None
    if source.kind != "named" or source.target not in CLASS_NAMES:
        return None
    return CLASS_NAMES[source.target]()


def class_label(label: int, names: list[str] | None) -> str:
    """A class as shown in legends: its name when known, else its number; -1 is unlabelled."""
    if label < 0:
        return "unlabelled"
    if names is not None and label < len(names):
        return names[label]
    return str(label)
