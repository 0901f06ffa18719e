"""The image shape a model is built for, learnt before the Trainer prepares the data.

Lightning runs ``prepare_data`` (the downloads of ``data.download=true``) on one process per node
and ``setup`` (the loading) on every process after it, both inside ``fit`` / ``test``, with a
barrier between them. The model must exist before that, and its networks depend on the image
shape; calling ``prepare_data`` from the runner to learn the shape earlier downloaded on every DDP
process at once. So the runner never calls ``prepare_data``, and loads data only where nothing
remains to download.
"""

from __future__ import annotations

from dataclasses import replace

from datamodules.ood_datamodule import OODDataModule
from datamodules.sources import Shape, known_shape_and_classes, parse_spec


def image_shape_before_trainer(datamodule: OODDataModule) -> Shape:
    """``(C, H, W)`` of the batches `datamodule` will serve, known before the Trainer starts.

    Without ``data.download`` nothing is downloaded, so the data is loaded here, as the Trainer's
    ``setup`` would load it on this process (that call is then a no-op): a missing dataset stops
    the run before it writes anything. With ``data.download`` the files may not be there yet: the
    shape comes from a named dataset's documentation, or from loading a path inlier alone (local
    files; named outliers may still be waiting for their download).
    """
    if not datamodule.cfg.download:
        datamodule.setup()
        return datamodule.image_shape
    if known_shape_and_classes(parse_spec(datamodule.cfg.inlier, "inlier")) is not None:
        return datamodule.image_shape
    inlier_only = OODDataModule(replace(datamodule.cfg, outliers=[]))
    inlier_only.setup()
    return inlier_only.image_shape
