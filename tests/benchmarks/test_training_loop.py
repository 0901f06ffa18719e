"""The training-loop benchmark times the same computation on both sides: Lightning's epoch and the
bare loop end with the same parameters, KL warm-up included."""

from __future__ import annotations

from benchmarks import training_loop
from datamodules.ood_datamodule import OODDataModule
from tests.helpers import one_thread


def test_the_bare_loop_trains_exactly_what_lightning_trains() -> None:
    config = training_loop.sliced_config(batches=3)
    # The default warms the KL term up: the case in which the bare loop once trained another loss.
    assert config.optim.kl_warmup_epochs > 0
    datamodule = OODDataModule(config.data)
    datamodule.setup("fit")
    with one_thread():
        lightning = training_loop.lightning_epoch(config, datamodule)
        bare = training_loop.bare_epoch(config, datamodule)
    assert training_loop.max_parameter_difference(lightning, bare) == 0.0
