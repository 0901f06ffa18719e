"""The LightningModule every VAE variant shares.

A variant is two choices: the latent space (R^d or the Alexandroff sphere S^d) and whether the
encoder's mean map has a fixed Lipschitz constant. Everything else — ELBO, importance-weighted
bound, optimisation, certificates — is written once here.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from lightning_modules.config import VARIANTS_BY_NAME, ModelConfig, OptimConfig
from lightning_modules.jacobian import jacobian_spectral_norms
from lightning_modules.latent_spaces import EuclideanLatent, LatentSpace, SphereLatent
from lightning_modules.likelihoods import log_likelihood, mean_image
from lightning_modules.lipschitz import certified_lipschitz, refresh_norms
from lightning_modules.networks import Decoder, Encoder
from scoring.knn import KnnMetric
from scoring.model import Encoding, ImportanceSamples


class BaseVAE(pl.LightningModule):
    """VAE with a configurable latent space and an optionally Lipschitz encoder."""

    variant: ClassVar[str]
    latent_kind: ClassVar[str]  # "euclidean" or "sphere"
    lipschitz_encoder: ClassVar[bool]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A variant names itself; its latent space and encoder come from the config's one table."""
        super().__init_subclass__(**kwargs)
        cls.latent_kind, cls.lipschitz_encoder = VARIANTS_BY_NAME[cls.variant]

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any],
        image_shape: tuple[int, int, int],
        max_epochs: int = 1,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        ModelConfig(**model), OptimConfig(**optim)  # validate; the dict form is what checkpoints store
        self.save_hyperparameters()
        # L = inf is the unconstrained end of a sweep over L: same variant, plain layers.
        self.constrained = self.lipschitz_encoder and math.isfinite(model["lipschitz"])
        # tuple(): a caller may pass any 3-sequence (e.g. a list), and shape checks compare tuples.
        self.image_shape = cast(tuple[int, int, int], tuple(image_shape))
        self.likelihood = model["likelihood"]
        self.latent: LatentSpace = (
            SphereLatent(model["latent_dim"], model["kappa_floor"])
            if self.latent_kind == "sphere"
            else EuclideanLatent(model["latent_dim"])
        )
        self.encoder = Encoder(
            self.image_shape,
            width=model["width"],
            hidden_dim=model["hidden_dim"],
            mean_dim=self.latent.mean_dim,
            scale_dim=self.latent.scale_dim,
            activation=model["activation"],
            lipschitz=model["lipschitz"] if self.constrained else None,
            power_iterations=model["power_iterations"],
            lipschitz_layers=model.get("lipschitz_layers", "spectral"),  # older checkpoints: spectral
        )
        if self.constrained:
            # Convolution norms are norms of operators on a given input size: fix it now, so the
            # certificate exists before the first training batch (e.g. at a sanity check).
            with torch.no_grad():
                self.encoder(torch.zeros(1, *self.image_shape))
        self.decoder = Decoder(
            self.image_shape,
            width=model["width"],
            hidden_dim=model["hidden_dim"],
            latent_dim=self.latent.ambient_dim,
            activation=model["activation"],
        )

    # ----------------------------------------------------------------- model contract
    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"The model expects images of shape [batch, {', '.join(map(str, self.image_shape))}] "
                f"but got {list(x.shape)}. Use data with the training shape, or set data.image_size "
                f"/ data.channels to convert it."
            )

    def encode(self, x: Tensor) -> Encoding:
        self.check_input(x)
        mean, scale = self.encoder(x)
        if not (torch.isfinite(mean).all() and torch.isfinite(scale).all()):
            raise FloatingPointError(self._divergence_message("the encoder output has NaN or inf values"))
        return self.encoding_from_outputs(mean, scale)

    def encoding_from_outputs(self, mean: Tensor, scale: Tensor) -> Encoding:
        """The posterior and latent location of raw encoder outputs (also of per-input encoder copies)."""
        return Encoding(self.latent.posterior(mean, scale), mean, scale, self.latent.location(mean))

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits for latent points z of shape [..., ambient_dim]."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Encoding:
        return self.encode(x)

    def prior(self, reference: Tensor) -> Distribution:
        return self.latent.prior(reference)

    def elbo_terms(self, x: Tensor, seeds: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One-sample reconstruction log-likelihood and analytic KL, per sample.

        With ``seeds`` (one per input) the sample comes from each input's own stream, not from the
        global RNG that drives training (see :meth:`sample_posterior`).
        """
        encoding = self.encode(x)
        z = encoding.posterior.rsample() if seeds is None else self.sample_posterior(encoding, 1, seeds)[0]
        log_lik = log_likelihood(self.decode(z), x, self.likelihood)
        kl = kl_divergence(encoding.posterior, self.prior(z))
        return log_lik, kl

    def elbo(self, x: Tensor, seeds: Tensor | None = None) -> Tensor:
        log_lik, kl = self.elbo_terms(x, seeds)
        return log_lik - kl

    def sample_posterior(self, encoding: Encoding, samples: int, seeds: Tensor | None = None) -> Tensor:
        """K posterior draws per input: [K, B, ambient_dim].

        With `seeds` (one per input) each input's draws come from its own seeded stream, so a
        sampling score of an input does not depend on which batch or process it landed in —
        what makes multi-process evaluation equal single-process evaluation.
        """
        if seeds is None:
            return encoding.posterior.rsample((samples,))
        return self.latent.rsample_seeded(encoding.posterior, samples, seeds)

    def importance_samples(
        self, x: Tensor, samples: int, encoding: Encoding | None = None, seeds: Tensor | None = None
    ) -> ImportanceSamples:
        encoding = encoding if encoding is not None else self.encode(x)
        z = self.sample_posterior(encoding, samples, seeds)
        return ImportanceSamples(
            # Summed in float64: scores are differences and variances of these sums (see ScoringModel).
            log_likelihood=log_likelihood(self.decode(z), x, self.likelihood, dtype=torch.float64),
            log_prior=self.prior(z).log_prob(z),
            log_posterior=encoding.posterior.log_prob(z),
        )

    def reconstruct(self, encoding: Encoding) -> Tensor:
        """Expected image decoded from the posterior's location (its mean / mode)."""
        return mean_image(self.decode(encoding.location), self.likelihood)

    def distance_from_centre(self, encoding: Encoding) -> Tensor:
        return self.latent.distance_from_centre(encoding.mean)

    @property
    def latent_metric(self) -> KnnMetric:
        return self.latent.metric

    # ----------------------------------------------------------------- certificates
    @torch.no_grad()
    def refresh_certificate(self) -> None:
        """Converge the encoder's per-layer norm estimates before evaluation (Lipschitz variants)."""
        if self.constrained:
            refresh_norms(self.encoder.mean_path, self.hparams["model"]["certify_iterations"])

    def certified_lipschitz(self) -> float | None:
        """A proven upper bound on the Lipschitz constant of x -> mean(x), or None."""
        if not self.constrained:
            return None
        return certified_lipschitz(self.encoder.mean_path) * float(self.hparams["model"]["lipschitz"])

    def empirical_lipschitz(self, x: Tensor) -> float:
        """The largest Jacobian spectral norm of x -> mean(x) found at the inputs ``x``.

        A lower bound on the mean map's Lipschitz constant (``certified_lipschitz`` is the upper
        bound); for any variant, constrained or not. docs/method.md, section 3.
        """
        was_training = self.training
        self.eval()  # Lipschitz layers must use their stored norms, not update them
        try:
            norms = jacobian_spectral_norms(lambda inputs: self.encoder(inputs)[0], x)
        finally:
            self.train(was_training)
        return float(norms.max())

    def domain_radius(self) -> float:
        """Circumradius of the pixel cube [0,1]^D around its centre: sqrt(D) / 2."""
        return math.sqrt(math.prod(self.image_shape)) / 2.0

    @torch.no_grad()
    def latent_bound(self) -> tuple[Tensor, float] | None:
        """(centre, radius) of a ball that provably holds mean(x) for every x in [0,1]^D.

        The centre is the encoding of the mid-grey image; every input is within sqrt(D)/2 of it,
        so an L-Lipschitz mean map keeps every encoding within L * sqrt(D)/2 of the centre.
        """
        certified = self.certified_lipschitz()
        if certified is None:
            return None
        mid_grey = torch.full((1, *self.image_shape), 0.5, device=self.device)
        centre = self.encoder(mid_grey)[0][0]
        return centre, certified * self.domain_radius()

    def describe(self) -> dict[str, Any]:
        """The `model` block of results.json."""
        bound = self.latent_bound()
        model = self.hparams["model"]
        return {
            "variant": self.variant,
            "latent_dim": model["latent_dim"],
            "latent_space": self.latent_kind,
            "likelihood": self.likelihood,
            "lipschitz": (model["lipschitz"] if self.constrained else "inf")
            if self.lipschitz_encoder
            else None,
            "certified_lipschitz": self.certified_lipschitz(),
            "latent_radius_bound": None if bound is None else bound[1],
        }

    def _divergence_message(self, what: str) -> str:
        return (
            f"Training diverged: {what} at epoch {self.current_epoch}, step {self.global_step}. "
            f"Lower optim.lr, set trainer.gradient_clip_val, or check the input data for NaNs; "
            f"checkpoints written so far are kept."
        )

    # ----------------------------------------------------------------- Lightning hooks
    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x = batch[0]
        log_lik, kl = self.elbo_terms(x)
        kl_weight = self.kl_weight_at(
            self.global_step,
            math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches),
        )
        loss = (kl_weight * kl - log_lik).mean()  # the negative ELBO once any KL warm-up is over
        if not torch.isfinite(loss):
            raise FloatingPointError(self._divergence_message(f"the training loss became {loss.item()}"))
        self.log_dict(
            {
                "train/loss": loss,
                "train/log_likelihood": log_lik.mean(),
                "train/kl": kl.mean(),
                "train/kl_weight": kl_weight,
            },
            on_step=True,
            on_epoch=True,
            prog_bar=False,
        )
        return loss

    def kl_weight_at(self, step: int, steps_per_epoch: int) -> float:
        """The KL term's weight in optimiser step ``step`` (from 0) of a training with
        ``steps_per_epoch`` optimiser steps an epoch: linear from 1/n to 1 over the n steps of
        ``optim.kl_warmup_epochs``, then 1. Counted in optimiser steps, so a resumed run continues
        the ramp where it stopped and gradient accumulation stretches nothing; a plain loop outside
        Lightning (the training-loop benchmark) gets the same weights by passing its own count."""
        warmup_epochs = self.hparams["optim"].get("kl_warmup_epochs", 0.0)  # absent in older checkpoints
        if warmup_epochs <= 0:
            return 1.0
        return min(1.0, (step + 1) / (warmup_epochs * steps_per_epoch))

    def _log_inlier_elbo(self, batch: tuple[Tensor, Tensor, Tensor], dataloader_idx: int, stage: str) -> None:
        # Dataloader 0 is the inlier set; outlier sets are scored by the OOD callback only, so
        # no outlier quantity can reach checkpoint selection.
        if dataloader_idx != 0:
            return
        # Seeded by each input's index: the selection criterion is then a fixed function of the
        # weights, and evaluating it never moves the global RNG that the training steps draw from.
        x, _, indices = batch
        self.log(
            f"{stage}/elbo",
            self.elbo(x, seeds=indices.long().cpu()).mean(),
            on_epoch=True,
            add_dataloader_idx=False,
            sync_dist=True,
            batch_size=batch[0].shape[0],
        )

    def validation_step(
        self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._log_inlier_elbo(batch, dataloader_idx, "val")

    def test_step(
        self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._log_inlier_elbo(batch, dataloader_idx, "test")

    def on_validation_start(self) -> None:
        self.refresh_certificate()

    def on_test_start(self) -> None:
        self.refresh_certificate()

    def configure_optimizers(self) -> Any:
        optim = self.hparams["optim"]
        optimizer = torch.optim.Adam(self.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"])
        if optim["scheduler"] == "none":
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, self.hparams["max_epochs"])
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
