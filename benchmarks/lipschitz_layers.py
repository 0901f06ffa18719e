"""Tight Lipschitz encoders: which 1-Lipschitz layer family keeps its certificate close to the truth.

    python -m benchmarks.lipschitz_layers [--steps 300] [--repeats 7] [--quick] [--results-dir DIR]

Issue 10, direction 1. The encoder's mean path (docs/method.md section 3: three 3x3 circular
convolutions with pair-sort activations and space-to-depth, a dense hidden layer, the dense mean
head; widths, latent size and activation of the default experiment, 28x28x1 inputs) is built
from five layer families:

* ``plain``: ``nn.Conv2d`` / ``nn.Linear`` (no constraint; the reference for time and fit);
* ``own_spectral``: ``LipschitzConv2d`` / ``LipschitzLinear`` (division by the power-iteration
  operator norm);
* ``own_aol``: ``AOLConv2d`` / ``AOLLinear`` (almost-orthogonal rescaling, Prach and Lampert 2022);
* ``deel_torchlip``: ``SpectralConv2d`` / ``SpectralLinear`` (spectral normalisation, then
  Bjorck orthonormalisation of the reshaped kernel, then the library's 1/sqrt(k_h k_w) convolution
  factor) with ``GroupSort2``, the library's gradient-norm-preserving setup (Anil et al. 2019);
* ``orthogonium``: ``AdaptiveOrthoConv2d`` (AOC; at stride 1 a BCOP kernel built from
  Bjorck-orthonormalised projectors) / ``OrthoLinear`` with ``MaxMin``, the library's setup.

Every constrained family is trained for ``--steps`` Adam steps (batches of 128 real Fashion-MNIST
training images) on one objective that rewards expressiveness: regress the map
x -> 2 V^T (x - mean), V the top latent-size principal directions of the training images. That
target is exactly 2-Lipschitz, so no 1-Lipschitz encoder can fit it and the best fit must use the
whole Lipschitz budget along the directions in which the data vary most: what a VAE's mean head
needs, without a decoder that would differ between families. Then, in evaluation mode and on one
frozen set of weights, the script measures

* the certified constant: a proven upper bound on the mean path's Lipschitz constant (see
  ``Family.certificate`` for each family's proof);
* the empirical lower bound: the largest Jacobian spectral norm found by power iteration
  (``lightning_modules.jacobian``) at 64 training images; empirical / certified says how tight
  the certificate is, and how close empirical comes to 1 how much of the budget the family can use;
* the fit: the fraction of the target's mean square that the encoder explains;
* the training step (forward, backward, Adam; batches of 128) against ``plain``, the contenders
  interleaved round by round, as the median of per-round ratios.

A family whose package is not installed (``pip install -e '.[bench]'``) is skipped with the
import error in the result.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from benchmarks.common import (
    RESULTS_DIR,
    default_config,
    interleaved_times,
    median_ratio,
    summary,
    write_result,
)
from lightning_modules.jacobian import jacobian_spectral_norms
from lightning_modules.lipschitz import (
    InvertibleDownsample,
    certified_lipschitz,
    conv_norm_bound,
    refresh_norms,
)
from lightning_modules.networks import Encoder

SEED = 0
BATCH_SIZE = 128
# Lipschitz constant of the regression target: above the encoders' budget of 1, so that fitting
# it rewards every bit of gain a family can realise.
TARGET_GAIN = 2.0
LEARNING_RATE = 1e-3  # the default experiment's optim.lr
# Power iterations of the own spectral layers before certifying in --quick runs (full runs use the
# default config's model.certify_iterations, as every evaluation of the project does).
QUICK_CERTIFY_ITERATIONS = 100


@dataclass(frozen=True)
class Settings:
    """How long each phase runs."""

    steps: int  # training steps before measuring
    train_batches: int  # distinct batches of 128 that the training steps cycle through
    jacobian_images: int  # images at which the Jacobian's spectral norm is estimated
    jacobian_iterations: int  # power iterations on J^T J per image
    timed_steps: int  # training steps per contender and timed round
    repeats: int  # timed rounds


FULL = Settings(
    steps=300, train_batches=64, jacobian_images=64, jacobian_iterations=50, timed_steps=10, repeats=7
)
QUICK = Settings(
    steps=3, train_batches=2, jacobian_images=8, jacobian_iterations=10, timed_steps=2, repeats=2
)


@dataclass(frozen=True)
class EncoderSpec:
    """The encoder's sizes, as `networks.Encoder` reads them from the model config."""

    image_shape: tuple[int, int, int]
    width: int
    hidden_dim: int
    latent_dim: int
    activation: str
    power_iterations: int

    @classmethod
    def from_model_config(cls, model: Any, image_shape: tuple[int, int, int]) -> EncoderSpec:
        return cls(
            image_shape,
            model.width,
            model.hidden_dim,
            model.latent_dim,
            model.activation,
            model.power_iterations,
        )


@dataclass(frozen=True)
class Family:
    """One way of building the mean path, and how its Lipschitz constant is certified."""

    name: str
    layers: str
    build: Callable[[EncoderSpec], nn.Sequential]
    # (mean path in eval mode, image shape) -> proven upper bound; None: no certificate (plain).
    certify: Callable[[nn.Sequential, tuple[int, int, int]], float] | None
    certificate: str


@dataclass(frozen=True)
class Measurement:
    """What one trained family achieves: both bounds on its Lipschitz constant, and its fit."""

    certified_lipschitz: float | None
    empirical_lipschitz: float  # max over the images: a lower bound on the true constant
    empirical_median: float  # median over the images: how typical the maximum is
    fit_loss: float  # mean over images of |f(x) - target(x)|^2 on the training batches
    explained_fraction: float  # 1 - fit_loss / mean |target(x)|^2

    @property
    def tightness(self) -> float | None:
        """empirical / certified: 1 means the certificate is the true constant."""
        if self.certified_lipschitz is None:
            return None
        return self.empirical_lipschitz / self.certified_lipschitz


def own_mean_path(spec: EncoderSpec, lipschitz: float | None, layers: str = "spectral") -> nn.Sequential:
    """The project's own encoder (`networks.Encoder`), reduced to its mean path."""
    encoder = Encoder(
        spec.image_shape,
        spec.width,
        spec.hidden_dim,
        spec.latent_dim,
        1,  # scale head: not on the mean path, never used here
        spec.activation,
        lipschitz,
        spec.power_iterations,
        layers,
    )
    return encoder.mean_path


def mirrored_mean_path(
    spec: EncoderSpec,
    conv: Callable[..., nn.Conv2d],
    linear: Callable[[int, int], nn.Linear],
    activation: Callable[[], nn.Module],
) -> nn.Sequential:
    """`networks.Encoder`'s mean path with another library's layers (checked by `check_layout`)."""
    channels, height, width = spec.image_shape
    w = spec.width
    same = {"kernel_size": 3, "padding": 1, "padding_mode": "circular"}
    trunk = nn.Sequential(
        conv(channels, w, **same),
        activation(),
        InvertibleDownsample(),
        conv(4 * w, 2 * w, **same),
        activation(),
        InvertibleDownsample(),
        conv(8 * w, 2 * w, **same),
        activation(),
        nn.Flatten(),
        linear(2 * w * (height // 4) * (width // 4), spec.hidden_dim),
        activation(),
    )
    return nn.Sequential(trunk, linear(spec.hidden_dim, spec.latent_dim))


def chain(module: nn.Module) -> Iterator[nn.Module]:
    """The modules a sequential mean path applies, in order (nested nn.Sequential flattened).

    Layers are not entered, so the modules that compute a parametrised weight (power iteration,
    Bjorck, BCOP) are not mistaken for parts of the forward pass.
    """
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from chain(child)
    else:
        yield module


def layout(path: nn.Module) -> list[tuple[Any, ...]]:
    """What makes two mean paths the same architecture: every layer's shape and wiring, with any
    other module (the families' pair-sort activations) counted as an activation."""
    items: list[tuple[Any, ...]] = []
    for module in chain(path):
        if isinstance(module, nn.Conv2d):
            items.append(
                (
                    "conv",
                    module.in_channels,
                    module.out_channels,
                    module.kernel_size,
                    module.stride,
                    module.padding,
                    module.dilation,
                    module.groups,
                    module.padding_mode,
                )
            )
        elif isinstance(module, nn.Linear):
            items.append(("linear", module.in_features, module.out_features))
        elif isinstance(module, (InvertibleDownsample, nn.Flatten)):
            items.append((type(module).__name__,))
        else:
            items.append(("activation",))
    return items


def check_layout(path: nn.Module, spec: EncoderSpec) -> None:
    """Refuse a mean path that is not the default encoder's architecture: the comparison between
    families must measure the layers, nothing else."""
    expected = layout(own_mean_path(spec, None))
    if layout(path) != expected:
        raise ValueError(f"the mean path's layout {layout(path)} differs from networks.Encoder's {expected}")


def layerwise_certificate(
    path: nn.Sequential, image_shape: tuple[int, int, int], activations: tuple[type[nn.Module], ...]
) -> float:
    """Proven upper bound on the Lipschitz constant of a sequential mean path of library layers.

    Lip(f o g) <= Lip(f) Lip(g), so the product of per-layer operator norms bounds the chain. Each
    norm is computed here from the weight the forward pass actually uses (read in the caller's
    ``parametrize.cached()`` context, so the same tensor the Jacobian probes), never taken from a
    library's claim: a convolution's by ``conv_norm_bound`` (float64 DFT of the kernel on its real
    input size, exact for circular 'same' stride-1 convolutions, Sedghi et al. 2019), a dense
    layer's by its float64 SVD. ``activations`` (pair sorts: piecewise permutations),
    space-to-depth (a permutation) and Flatten count 1; anything else raises, as in
    ``certified_lipschitz``.
    """
    modules = list(chain(path))
    for module in modules:
        if isinstance(module, nn.Conv2d):
            if (
                module.groups != 1
                or isinstance(module.padding, str)
                or module.padding_mode not in ("zeros", "circular")
            ):
                raise ValueError(
                    f"{module} is outside conv_norm_bound's proof (groups=1, integer padding, "
                    "padding_mode zeros or circular)"
                )
        elif not isinstance(module, (nn.Linear, *activations, InvertibleDownsample, nn.Flatten)):
            raise ValueError(f"cannot certify {type(module).__name__}: not known to be 1-Lipschitz")
    sizes: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        sizes[module] = (tuple(inputs[0].shape[-2:]), tuple(output.shape[-2:]))

    hooks = [module.register_forward_hook(record) for module in modules if isinstance(module, nn.Conv2d)]
    try:
        path(torch.zeros(1, *image_shape))
    finally:
        for hook in hooks:
            hook.remove()
    bound = 1.0
    for module in modules:
        if isinstance(module, nn.Conv2d):
            input_size, output_size = sizes[module]
            bound *= conv_norm_bound(
                module.weight,
                input_size,
                output_size,
                cast(tuple[int, ...], module.padding),  # integers: checked above
                module.stride,
                module.dilation,
                module.padding_mode,
            )
        elif isinstance(module, nn.Linear):
            bound *= float(torch.linalg.matrix_norm(module.weight.detach().double(), ord=2))
    return bound


def project_certificate(path: nn.Sequential, image_shape: tuple[int, int, int]) -> float:
    """`certified_lipschitz`, the certificate every evaluation of the project reports (the layers
    learnt their input sizes in their first forward, so the image shape is not needed)."""
    return certified_lipschitz(path)


def _own_family(name: str, layers: str) -> Family:
    if layers == "spectral":
        description = "LipschitzConv2d / LipschitzLinear + MaxMin"
        proof = (
            "certified_lipschitz: product over layers of B(W)/sigma, B the exact float64 FFT (conv) "
            "or SVD (dense) norm of the raw weight, sigma the stored divisor the eval forward uses"
        )
    else:
        description = "AOLConv2d / AOLLinear + MaxMin"
        proof = (
            "certified_lipschitz: product over layers of the exact float64 FFT (conv) / SVD (dense) "
            "norm of the AOL-rescaled weight (each <= 1 by Prach and Lampert's theorems)"
        )
    build = partial(own_mean_path, lipschitz=1.0, layers=layers)
    return Family(name, description, build, project_certificate, proof)


def _plain_family() -> Family:
    return Family(
        "plain",
        "nn.Conv2d / nn.Linear + MaxMin",
        partial(own_mean_path, lipschitz=None),
        None,
        "none (unconstrained reference)",
    )


def _activation(spec: EncoderSpec, pair_sort: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    return pair_sort if spec.activation == "maxmin" else nn.ReLU


def _torchlip_family() -> Family:
    torchlip = importlib.import_module("deel.torchlip")

    def build(spec: EncoderSpec) -> nn.Sequential:
        activation = _activation(spec, torchlip.GroupSort2)
        return mirrored_mean_path(spec, torchlip.SpectralConv2d, torchlip.SpectralLinear, activation)

    return Family(
        "deel_torchlip",
        "SpectralConv2d / SpectralLinear (spectral norm + Bjorck) + GroupSort2",
        build,
        partial(layerwise_certificate, activations=(torchlip.GroupSort2, nn.ReLU)),
        "product of exact per-layer norms (float64 FFT / SVD) of the effective weights. The "
        "library's own claim (Bjorck-orthonormal reshaped kernel times 1/sqrt(k_h k_w)) holds only "
        "up to Bjorck's stopping tolerance (eps 1e-3, at most 15 iterations), so it is not used",
    )


def _orthogonium_family() -> Family:
    layers = importlib.import_module("orthogonium.layers")

    def build(spec: EncoderSpec) -> nn.Sequential:
        activation = _activation(spec, layers.MaxMin)
        return mirrored_mean_path(spec, layers.AdaptiveOrthoConv2d, layers.OrthoLinear, activation)

    return Family(
        "orthogonium",
        "AdaptiveOrthoConv2d (AOC/BCOP) / OrthoLinear + MaxMin",
        build,
        partial(layerwise_certificate, activations=(layers.MaxMin, nn.ReLU)),
        "product of exact per-layer norms (float64 FFT / SVD) of the effective weights. The "
        "library's orthogonality holds only up to Bjorck's tolerance (12 iterations), so it is "
        "not used",
    )


FAMILY_FACTORIES: dict[str, Callable[[], Family]] = {
    "plain": _plain_family,
    "own_spectral": partial(_own_family, "own_spectral", "spectral"),
    "own_aol": partial(_own_family, "own_aol", "aol"),
    "deel_torchlip": _torchlip_family,
    "orthogonium": _orthogonium_family,
}
PACKAGES = ("deel-torchlip", "orthogonium")


def available_families() -> tuple[dict[str, Family], dict[str, str]]:
    """The families whose packages import, and for the others why not."""
    families: dict[str, Family] = {}
    skipped: dict[str, str] = {}
    for name, factory in FAMILY_FACTORIES.items():
        try:
            families[name] = factory()
        except ImportError as error:
            skipped[name] = f"{type(error).__name__}: {error} (pip install -e '.[bench]')"
    return families, skipped


def build_mean_path(family: Family, spec: EncoderSpec) -> nn.Sequential:
    """The family's mean path, seeded, checked to have the default encoder's architecture."""
    torch.manual_seed(SEED)
    path = family.build(spec)
    check_layout(path, spec)
    return path


def principal_target(images: Tensor, latent_dim: int) -> Callable[[Tensor], Tensor]:
    """x -> TARGET_GAIN V^T (x - mean), V the top principal directions of ``images``: a map with
    Lipschitz constant exactly TARGET_GAIN (V has orthonormal columns)."""
    if len(images) < latent_dim:
        raise ValueError(f"{len(images)} images have fewer than {latent_dim} principal directions")
    flat = images.flatten(1).double()
    mean = flat.mean(dim=0)
    _, _, v_transposed = torch.linalg.svd(flat - mean, full_matrices=False)
    projection = (TARGET_GAIN * v_transposed[:latent_dim].T).to(images.dtype)
    mean = mean.to(images.dtype)

    def target(x: Tensor) -> Tensor:
        return (x.flatten(1) - mean) @ projection

    return target


def fit_step(path: nn.Module, optimiser: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    """One training step: forward, squared error to the target, backward, Adam."""
    loss = (path(x) - y).square().sum(dim=1).mean()
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


def train(
    path: nn.Module, optimiser: torch.optim.Optimizer, batches: list[tuple[Tensor, Tensor]], steps: int
) -> None:
    """``steps`` training steps, cycling through ``batches`` from the first one."""
    path.train()
    for step in range(steps):
        fit_step(path, optimiser, *batches[step % len(batches)])


def measure(
    family: Family,
    path: nn.Sequential,
    batches: list[tuple[Tensor, Tensor]],
    images: Tensor,
    image_shape: tuple[int, int, int],
    jacobian_iterations: int,
    certify_iterations: int,
) -> Measurement:
    """Both bounds and the fit, in evaluation mode, on one frozen set of weights.

    ``parametrize.cached()`` computes every parametrised weight once: orthogonium's power
    iteration otherwise updates its vectors (and so the weight) on every forward, even in eval
    mode, and the certificate must hold for exactly the weights the Jacobian probes. The
    certificate reads the weights first, so they are cached outside the Jacobian's functorch
    transforms.
    """
    path.eval()
    refresh_norms(path, certify_iterations)  # the own spectral layers' converged sigma; others: no-op
    with parametrize.cached(), torch.no_grad():
        certified = None if family.certify is None else family.certify(path, image_shape)
        norms = jacobian_spectral_norms(path, images, iterations=jacobian_iterations, seed=SEED)
        losses = torch.cat([(path(x) - y).square().sum(dim=1) for x, y in batches])
        target_energy = torch.cat([y.square().sum(dim=1) for _, y in batches])
    loss = float(losses.mean())
    return Measurement(
        certified_lipschitz=certified,
        empirical_lipschitz=float(norms.max()),
        empirical_median=float(norms.median()),
        fit_loss=loss,
        explained_fraction=1.0 - loss / float(target_energy.mean()),
    )


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"torch": torch.__version__}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def load_batches(settings: Settings) -> tuple[list[Tensor], tuple[int, int, int], Any]:
    """The first ``train_batches`` shuffled batches of the default experiment's training split."""
    from datamodules.ood_datamodule import OODDataModule

    config = default_config(
        f"data.max_train_samples={settings.train_batches * BATCH_SIZE}", f"data.batch_size={BATCH_SIZE}"
    )
    datamodule = OODDataModule(config.data)
    datamodule.setup("fit")
    pl.seed_everything(SEED, verbose=False)
    images = [x for x, _, _ in datamodule.train_dataloader()][: settings.train_batches]
    return images, datamodule.image_shape, config


def table(results: dict[str, dict[str, Any]]) -> str:
    def number(value: float | None, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = ("family", "certified", "empirical", "emp/cert", "explained", "step/plain")
    lines = [f"{header[0]:<14} " + " ".join(f"{title:>10}" for title in header[1:])]
    columns = ("certified_lipschitz", "empirical_lipschitz", "tightness", "explained_fraction")
    for name, result in results.items():
        cells = [number(result[column]) for column in columns]
        cells.append(number(result["step_ratio_vs_plain"], 2))
        lines.append(f"{name:<14} " + " ".join(f"{cell:>10}" for cell in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, help=f"training steps before measuring ({FULL.steps})")
    parser.add_argument("--repeats", type=int, help=f"timed rounds ({FULL.repeats})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    given = {"steps": args.steps, "repeats": args.repeats}
    overrides = {key: value for key, value in given.items() if value is not None}
    settings = replace(QUICK if args.quick else FULL, **overrides)
    images, image_shape, config = load_batches(settings)
    spec = EncoderSpec.from_model_config(config.model, image_shape)
    certify_iterations = QUICK_CERTIFY_ITERATIONS if args.quick else config.model.certify_iterations
    target = principal_target(torch.cat(images), spec.latent_dim)
    batches = [(x, target(x)) for x in images]
    probe = images[0][: settings.jacobian_images]
    families, skipped = available_families()
    results: dict[str, dict[str, Any]] = {}
    contenders: dict[str, Callable[[], None]] = {}
    for name, family in families.items():
        path = build_mean_path(family, spec)
        optimiser = torch.optim.Adam(path.parameters(), lr=LEARNING_RATE)
        train(path, optimiser, batches, settings.steps)
        measurement = measure(
            family, path, batches, probe, image_shape, settings.jacobian_iterations, certify_iterations
        )
        results[name] = {
            "layers": family.layers,
            "certificate": family.certificate,
            **asdict(measurement),
            "tightness": measurement.tightness,
        }
        contenders[name] = partial(train, path, optimiser, batches, settings.timed_steps)
        print(f"measured {name}", flush=True)
    for run in contenders.values():  # warm-up: first-use costs of every kernel
        run()
    times = interleaved_times(contenders, settings.repeats)
    for name, result in results.items():
        result["step_time"] = summary([t / settings.timed_steps for t in times[name]])
        result["step_ratio_vs_plain"] = median_ratio(times[name], times["plain"])
    payload = {
        "mode": "quick" if args.quick else "full",
        "settings": asdict(settings),
        "certify_iterations": certify_iterations,
        "encoder": asdict(spec),
        "objective": (
            f"MSE regression of x -> {TARGET_GAIN} V^T (x - mean), V the top {spec.latent_dim} "
            f"principal directions of the {len(images) * BATCH_SIZE} training images; Adam, "
            f"lr {LEARNING_RATE}, batches of {BATCH_SIZE}"
        ),
        "versions": package_versions(),
        "threads": torch.get_num_threads(),
        "families": results,
        "skipped": skipped,
    }
    written = write_result("lipschitz_layers", payload, args.results_dir)
    print(table(results))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
