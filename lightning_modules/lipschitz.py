"""1-Lipschitz building blocks for an encoder with a fixed, certified Lipschitz constant.

Every linear and convolutional layer divides its weight by ``sigma``, an estimate of the operator
norm of the layer *as an operator* on its actual input space. Activations are 1-Lipschitz
(MaxMin, ReLU), downsampling is an orthogonal space-to-depth permutation, and nothing depends on
the data (no BatchNorm). The composition is then (at most) 1-Lipschitz, and
:func:`certified_lipschitz` turns that into a number backed by a proof rather than by power
iteration, which approaches the norm from below and so can never certify anything by itself.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AOLConv2d",
    "AOLLinear",
    "InvertibleDownsample",
    "LipschitzConv2d",
    "LipschitzLinear",
    "MaxMin",
    "certified_lipschitz",
    "refresh_norms",
]

# Power iterations that seed sigma when a layer first knows its operator (construction for dense
# layers, first forward for convolutions), so that even an untrained layer is normalised.
_WARM_UP_ITERATIONS = 50

# Floor of the AOL rescaling's denominators (an all-zero weight column / input channel).
_AOL_EPS = 1e-12

# Frequencies per batched SVD in the FFT bound: bounds memory for wide convolutions.
_FFT_ELEMENTS_PER_CHUNK = 1 << 21


def _normalise(x: Tensor, eps: float) -> Tensor:
    return x / torch.linalg.vector_norm(x).clamp_min(eps)


class _NormalisedOperator(nn.Module):
    """Shared machinery of layers that divide their weight by its operator norm.

    A subclass defines the linear operator A(x) of its weight (bias excluded: it does not change
    the Lipschitz constant) and its adjoint A^T(y); power iteration alternates
    v <- A^T u / |A^T u|, u <- A v / |A v| and sigma = u . A v -> |A|_2 from below.

    Buffers: ``u`` (output space), ``v`` (input space) and ``sigma``. As in
    ``torch.nn.utils.spectral_norm``, each training forward runs ``n_power_iterations`` steps
    without gradient, then sigma = u . A(v) is recomputed *with* gradient through the weight, so
    training sees the derivative of the normalisation; eval forwards use the stored sigma and
    never update anything.
    """

    weight: Tensor
    u: Tensor
    v: Tensor
    sigma: Tensor
    n_power_iterations: int
    eps: float

    def _operator(self, x: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def _adjoint(self, y: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def raw_norm_bound(self) -> float:
        """A proven upper bound on the operator norm of the raw weight's operator A."""
        raise NotImplementedError

    def _norm_ready(self) -> bool:
        """Whether the operator (and hence the buffers u, v) is known."""
        return True

    def _require_operator(self) -> None:
        if not self._norm_ready():
            raise RuntimeError(
                f"{type(self).__name__} has not seen an input yet, so its operator (its input "
                "size) is unknown; call the module once on a batch of the intended size first"
            )

    def _init_norm_buffers(
        self,
        u: Tensor,
        v: Tensor,
        n_power_iterations: int,
        eps: float,
    ) -> None:
        if n_power_iterations < 0:
            raise ValueError(
                f"n_power_iterations={n_power_iterations} must be >= 0 (1 is the usual choice; "
                "0 keeps sigma fixed between refresh_norm calls)"
            )
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        self.register_buffer("u", u)
        self.register_buffer("v", v)
        self.register_buffer("sigma", torch.ones((), dtype=u.dtype, device=u.device))

    @torch.no_grad()
    def _iterate(self, weight: Tensor, u: Tensor, v: Tensor, n: int) -> tuple[Tensor, Tensor]:
        for _ in range(n):
            v = _normalise(self._adjoint(u, weight), self.eps)
            u = _normalise(self._operator(v, weight), self.eps)
        return u, v

    @torch.no_grad()
    def _warm_up(self) -> None:
        """Start from random vectors and converge sigma enough to normalise an untrained layer."""
        self.u.copy_(_normalise(torch.randn_like(self.u), self.eps))
        self.v.copy_(_normalise(torch.randn_like(self.v), self.eps))
        self.refresh_norm(_WARM_UP_ITERATIONS)

    @torch.no_grad()
    def refresh_norm(self, n_iterations: int = 500) -> None:
        """Run a long power iteration in float64 and store the converged sigma, u and v.

        Call before evaluation or certification: during training sigma lags the weights by one
        step and carries float32 rounding. The estimate is still a lower bound on the norm; see
        :meth:`certified_norm` for the proven side.
        """
        self._require_operator()
        weight = self.weight.detach().double()
        _, v = self._iterate(weight, self.u.double(), self.v.double(), n_iterations)
        image = self._operator(v, weight)
        sigma = torch.linalg.vector_norm(image)
        self.u.copy_(_normalise(image, self.eps))
        self.v.copy_(v)
        self.sigma.copy_(sigma)

    def certified_norm(self) -> float:
        """Proven upper bound on the operator norm of the normalised layer W / sigma.

        Uses the stored sigma, i.e. the one eval-mode forwards divide by. Floating-point rounding
        of the forward pass itself (relative ~1e-7 in float32) is not included.
        """
        return self.raw_norm_bound() / max(float(self.sigma), self.eps)

    def _normalised_weight(self) -> Tensor:
        if not self.training:
            return self.weight / self.sigma.clamp_min(self.eps)
        u, v = self._iterate(self.weight.detach(), self.u, self.v, self.n_power_iterations)
        with torch.no_grad():
            self.u.copy_(u)
            self.v.copy_(v)
        # Clones: autograd saves u and v, and a second forward before backward updates the buffers
        # in place.
        sigma = (u.clone() * self._operator(v.clone(), self.weight)).sum()
        with torch.no_grad():
            self.sigma.copy_(sigma)
        return self.weight / sigma.clamp_min(self.eps)

    def reset_parameters(self) -> None:
        """Re-initialise the weights and, once the operator is known, sigma with them."""
        super().reset_parameters()  # type: ignore[misc]  # nn.Linear / nn.Conv2d
        if hasattr(self, "sigma") and self._norm_ready():  # buffers exist only after __init__
            self._warm_up()


class LipschitzLinear(_NormalisedOperator, nn.Linear):
    """``nn.Linear`` whose weight is divided by its spectral norm, making x -> W x / sigma
    1-Lipschitz (up to the power-iteration error, which :meth:`certified_norm` accounts for).

    The certificate is exact: the float64 matrix 2-norm of W (an SVD) divided by sigma.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        n_power_iterations: int = 1,
        eps: float = 1e-12,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_norm_buffers(
            torch.empty(out_features, device=self.weight.device, dtype=self.weight.dtype),
            torch.empty(in_features, device=self.weight.device, dtype=self.weight.dtype),
            n_power_iterations,
            eps,
        )
        self._warm_up()

    def _operator(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight)

    def _adjoint(self, y: Tensor, weight: Tensor) -> Tensor:
        return F.linear(y, weight.t())

    def raw_norm_bound(self) -> float:
        """Exact spectral norm of W (float64 SVD)."""
        return float(torch.linalg.matrix_norm(self.weight.detach().double(), ord=2))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self._normalised_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_power_iterations={self.n_power_iterations}"


class LipschitzConv2d(_NormalisedOperator, nn.Conv2d):
    """``nn.Conv2d`` normalised by the operator norm of the convolution on its input space.

    The operator is the convolution itself, with the layer's stride, padding, padding mode and
    dilation, acting on inputs of one fixed spatial size (h, w); power iteration alternates the
    convolution and its adjoint (``conv_transpose2d``, plus the adjoint of circular padding). The
    norm of the reshaped kernel matrix is *not* used: it is not the operator norm and can
    under-estimate it by up to a factor sqrt(k_h k_w).

    The operator norm depends on (h, w), so the layer learns it from its first input, stores it in
    the ``input_size`` buffer (it survives ``state_dict``), and rejects any other size later.

    Supported: integer padding, ``padding_mode`` 'zeros' or 'circular', ``groups=1``. Use
    ``padding_mode='circular'``, stride 1 and padding = dilation * (k - 1) / 2 for an *exact*
    certificate (see :meth:`raw_norm_bound`).

    Under DistributedDataParallel each rank seeds u and v on its first forward; DDP broadcasts
    buffers from rank 0 before every later forward, so the ranks agree from then on.
    """

    input_size: Tensor
    # Integer padding only: the constructor rejects the string forms ('same', 'valid').
    padding: tuple[int, ...]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        n_power_iterations: int = 1,
        eps: float = 1e-12,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if groups != 1:
            raise ValueError(
                f"LipschitzConv2d supports groups=1 only, got groups={groups}; a grouped "
                "convolution needs a per-group norm that this layer does not implement"
            )
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(
                f"padding_mode={padding_mode!r} is not supported; use 'zeros' or 'circular' "
                "(the adjoint of other padding modes is not implemented)"
            )
        if isinstance(padding, str):
            raise ValueError(
                f"padding={padding!r} is not supported; pass integer padding, e.g. "
                "padding=dilation * (kernel_size - 1) // 2 for 'same' at an odd kernel size"
            )
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=cast(Literal["zeros", "circular"], padding_mode),  # checked above
            device=device,
            dtype=dtype,
        )
        self._init_norm_buffers(
            torch.empty(0, device=self.weight.device, dtype=self.weight.dtype),
            torch.empty(0, device=self.weight.device, dtype=self.weight.dtype),
            n_power_iterations,
            eps,
        )
        self.register_buffer("input_size", torch.zeros(2, dtype=torch.long, device=self.weight.device))

    def _norm_ready(self) -> bool:
        return bool(self.input_size.all())

    def _operator(self, x: Tensor, weight: Tensor) -> Tensor:
        return self._conv_forward(x, weight, None)

    def _adjoint(self, y: Tensor, weight: Tensor) -> Tensor:
        """A^T y. For zero padding, conv_transpose2d with the layer's padding is the exact adjoint
        once ``output_padding`` restores the input size. For circular padding A = conv o P with P
        the circular padding map; conv_transpose2d without padding gives conv^T y on the padded
        grid and P^T folds it back: every padded position q adds into input position
        (q - p) mod n."""
        h, w = (int(s) for s in self.input_size)
        circular = self.padding_mode == "circular"
        padding = (0, 0) if circular else self.padding
        target = [n + 2 * p for n, p in zip((h, w), self.padding)] if circular else [h, w]
        output_padding = [
            t - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
            for t, o, s, p, d, k in zip(
                target, y.shape[-2:], self.stride, padding, self.dilation, self.kernel_size
            )
        ]
        x = F.conv_transpose2d(
            y,
            weight,
            stride=self.stride,
            padding=padding,
            output_padding=output_padding,
            dilation=self.dilation,
        )
        if circular:
            for dim, n, p in ((-2, h, self.padding[0]), (-1, w, self.padding[1])):
                index = (torch.arange(n + 2 * p, device=x.device) - p) % n
                shape = list(x.shape)
                shape[dim] = n
                x = x.new_zeros(shape).index_add_(dim, index, x)
        return x

    def _learn_input_size(self, size: torch.Size) -> None:
        """Fix the operator's input size, size u and v for it and seed sigma."""
        self.input_size.copy_(torch.tensor(size, dtype=torch.long))
        probe = torch.zeros((1, self.in_channels, *size), device=self.v.device, dtype=self.v.dtype)
        with torch.no_grad():
            output_shape = self._operator(probe, self.weight).shape
        self.v.resize_(probe.shape)
        self.u.resize_(output_shape)
        self._warm_up()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Tensor],
        prefix: str,
        *args: object,
        **kwargs: object,
    ) -> None:
        """u and v take their shape from the stored input size: resize them (in place) before
        the default loader copies, which requires matching shapes."""
        for name in ("u", "v"):
            stored = state_dict.get(prefix + name)
            if stored is not None:
                getattr(self, name).resize_(stored.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def raw_norm_bound(self) -> float:
        """Proven upper bound on |A|_2 for the raw kernel, exact in the circular 'same' case.

        Proof. Per axis (the 2-D case is the tensor product), write the layer as A = S C E:

        * C is a circular cross-correlation on a grid of size N with the dilated kernel. Its
          c_out x c_in blocks are circulant, all diagonalised by the same unitary DFT, so C is
          unitarily equivalent to a block-diagonal matrix whose blocks are the c_out x c_in
          matrices K(w) of the 2-D DFT of the kernel zero-padded to the N_h x N_w grid:
          |C|_2 = max_w |K(w)|_2. Real kernels give K(-w) = conj K(w), so the half spectrum of
          ``rfft2`` suffices.
        * Zero padding p: E embeds the input at offset p in a zero grid of size N = n + 2p (an
          isometry) and S keeps the output positions i s, i < n_out. Those read input positions
          i s + j d <= n + 2p - 1 < N, so no read wraps around and the zero-padded layer equals
          S C E exactly. S is a coordinate projection (|S| <= 1), so |A| <= |C|.
        * Circular padding p: the layer reads x[(i s + j d - p) mod n], so with E = I, N = n and
          C shifted by p (a unitary shift), S keeps rows r_i = i s mod n. S^T S is diagonal with
          the multiplicity of each r, so |S| = sqrt(max multiplicity) and
          |A| <= sqrt(max multiplicity) |C|. Taps whose positions collide mod n add up in C.

        With circular padding, stride 1 and n_out = n (padding = d (k - 1) / 2), S is the identity
        and the bound is the exact norm. Strides, zero padding or other output sizes make S a
        projection and the bound an over-estimate. Computed in float64.
        """
        self._require_operator()
        return conv_norm_bound(
            self.weight,
            tuple(int(x) for x in self.input_size),
            tuple(self.u.shape[-2:]),
            self.padding,
            self.stride,
            self.dilation,
            self.padding_mode,
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        if not self._norm_ready():
            self._learn_input_size(size)
        elif tuple(size) != tuple(int(s) for s in self.input_size):
            known = tuple(int(s) for s in self.input_size)
            raise ValueError(
                f"LipschitzConv2d was normalised for inputs of spatial size {known} but got "
                f"{tuple(size)}; the operator norm depends on the input size, so use a separate "
                "layer (or a fresh one) for each input size"
            )
        return self._conv_forward(x, self._normalised_weight(), self.bias)

    def extra_repr(self) -> str:
        size = tuple(int(s) for s in self.input_size) if self._norm_ready() else "unknown"
        return f"{super().extra_repr()}, n_power_iterations={self.n_power_iterations}, input_size={size}"


class AOLLinear(nn.Linear):
    """Almost-orthogonal Lipschitz linear layer (Prach and Lampert, ECCV 2022).

    The weight is used as W D with D = diag(d), d_j = (sum_i |W^T W|_ij)^(-1/2). Their Theorem 1
    proves |W D|_2 <= 1 for every W, so there is no power iteration, no buffer and no lag: the
    bound holds at every step. Training pushes W^T W towards a diagonal (the rescaling wastes
    nothing there), so the layer tends to orthogonal, with every singular value near 1 instead of
    only the largest; compositions of such layers keep their certificate tight.
    :meth:`certified_norm` is the exact float64 spectral norm of W D (at most 1 by the theorem).
    """

    def rescaled_weight(self) -> Tensor:
        gram = (self.weight.t() @ self.weight).abs()
        return self.weight * gram.sum(dim=1).clamp_min(_AOL_EPS).rsqrt()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.rescaled_weight(), self.bias)

    @torch.no_grad()
    def certified_norm(self) -> float:
        return float(torch.linalg.matrix_norm(self.rescaled_weight().double(), ord=2))


class AOLConv2d(nn.Conv2d):
    """Almost-orthogonal Lipschitz convolution (Prach and Lampert, ECCV 2022), stride 1, 'same' size.

    With P_ij(t) = sum_o sum_x K_oi(x) K_oj(x + t) the cross-correlations of the kernel's input
    channels, input channel i is scaled by d_i = (sum_j sum_t |P_ij(t)|)^(-1/2), which bounds the
    operator norm by 1 (their Theorem 2; with circular padding the Gram operator's kernel is P
    wrapped around, whose absolute row sums are no larger). The certificate is not taken on
    trust: :meth:`certified_norm` is the exact DFT bound of the rescaled kernel on the layer's
    input size (``conv_norm_bound``), learnt from the first input like ``LipschitzConv2d``.
    """

    input_size: Tensor
    padding: tuple[int, ...]  # integers: the constructor sets them

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding_mode: str = "circular"
    ) -> None:
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"padding_mode={padding_mode!r} is not supported; use 'zeros' or 'circular'")
        if kernel_size % 2 == 0:
            raise ValueError(
                f"AOLConv2d needs an odd kernel_size for a 'same'-size output, got {kernel_size}"
            )
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            padding=(kernel_size - 1) // 2,
            padding_mode=cast(Literal["zeros", "circular"], padding_mode),  # checked above
        )
        self.register_buffer("input_size", torch.zeros(2, dtype=torch.long))

    def rescaled_weight(self) -> Tensor:
        kernel = self.weight.transpose(0, 1)  # [in, out, kh, kw]: one "image" per input channel
        height, width = self.weight.shape[-2:]
        correlations = F.conv2d(kernel, kernel, padding=(height - 1, width - 1))  # [in, in, 2kh-1, 2kw-1]
        scale = correlations.abs().sum(dim=(1, 2, 3)).clamp_min(_AOL_EPS).rsqrt()
        return self.weight * scale.view(1, -1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if not self.input_size.all():
            self.input_size.copy_(torch.tensor(x.shape[-2:], dtype=torch.long))
        return self._conv_forward(x, self.rescaled_weight(), self.bias)

    @torch.no_grad()
    def certified_norm(self) -> float:
        if not self.input_size.all():
            raise RuntimeError(
                "AOLConv2d has not seen an input yet, so its operator (its input size) is unknown"
            )
        size = tuple(int(x) for x in self.input_size)
        return conv_norm_bound(
            self.rescaled_weight(),
            size,
            size,
            self.padding,
            self.stride,
            self.dilation,
            self.padding_mode,
        )


def conv_norm_bound(
    weight: Tensor,
    input_size: tuple[int, ...],
    output_size: tuple[int, ...],
    padding: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    padding_mode: str,
) -> float:
    """Proven upper bound on the operator norm of a convolution (see LipschitzConv2d.raw_norm_bound)."""
    weight = weight.detach().double()
    out_channels, in_channels = weight.shape[:2]
    kernel_size = weight.shape[2:]
    grid: list[int] = []
    selection_norm_sq = 1
    for axis, (n, p, s, d, n_out) in enumerate(zip(input_size, padding, stride, dilation, output_size)):
        if padding_mode == "circular":
            grid.append(n)
            rows = (torch.arange(n_out) * s) % n
            selection_norm_sq *= int(torch.bincount(rows, minlength=n).max())
        else:
            grid.append(n + 2 * p)
        taps = (torch.arange(kernel_size[axis], device=weight.device) * d) % grid[-1]
        shape = list(weight.shape)
        shape[2 + axis] = grid[-1]
        weight = weight.new_zeros(shape).index_add_(2 + axis, taps, weight)
    spectrum = torch.fft.rfft2(weight).permute(2, 3, 0, 1).reshape(-1, out_channels, in_channels)
    chunk = max(1, _FFT_ELEMENTS_PER_CHUNK // (out_channels * in_channels))
    largest = max(float(torch.linalg.matrix_norm(block, ord=2).max()) for block in spectrum.split(chunk))
    return math.sqrt(selection_norm_sq) * largest


class MaxMin(nn.Module):
    """GroupSort with groups of 2 on the channel dimension (dim 1).

    Splits the channels into halves a and b and returns cat(max(a, b), min(a, b)). Per pair this
    is a sort, i.e. piecewise a permutation of coordinates: it is 1-Lipschitz and its Jacobian is
    a permutation matrix, so gradient norms are preserved exactly (unlike ReLU, which zeroes
    them). ``torch.where`` routes each gradient to exactly one input, also at ties, where
    ``torch.maximum`` would split it in halves and lose norm.
    """

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        if channels % 2:
            raise ValueError(
                f"MaxMin needs an even number of channels (dim 1) to form pairs, got {channels}; "
                "change the preceding layer's width to an even number"
            )
        a, b = x.chunk(2, dim=1)
        keep = a >= b
        return torch.cat((torch.where(keep, a, b), torch.where(keep, b, a)), dim=1)


class InvertibleDownsample(nn.Module):
    """Space-to-depth (``F.pixel_unshuffle``): (C, H, W) -> (C f^2, H / f, W / f).

    A permutation of coordinates, hence orthogonal with norm exactly 1. It replaces strided
    convolutions, whose FFT certificate is only an upper bound, so that the certified Lipschitz
    constant of the encoder stays exact.
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"InvertibleDownsample(factor={self.factor}) needs height and width divisible by "
                f"{self.factor}, got {height}x{width}; resize or pad the input"
            )
        return F.pixel_unshuffle(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


# Modules that are 1-Lipschitz maps (activations, permutations) or that compose their children in
# sequence, so they contribute a factor 1 to the product bound.
_ONE_LIPSCHITZ = (nn.ReLU, MaxMin, InvertibleDownsample, nn.Flatten, nn.Identity, nn.Sequential)


def certified_lipschitz(module: nn.Module, extra_allowed: tuple[type[nn.Module], ...] = ()) -> float:
    """Proven upper bound on the Lipschitz constant of a *sequential* chain of layers.

    The Lipschitz constant of a composition is at most the product of those of its parts, so the
    bound is the product of :meth:`certified_norm` over every Lipschitz / AOL linear or conv layer,
    with allow-listed modules (ReLU, MaxMin, InvertibleDownsample, Flatten, Identity) counting 1.
    This is valid only if the module *is* the composition of its layers in order: residual
    connections, concatenations or any other wiring break it. Hence only nn.Sequential is accepted
    as a container, and any other module (BatchNorm, plain nn.Linear / nn.Conv2d, an unknown
    activation or a custom container) raises instead of yielding a silently false certificate.
    ``extra_allowed`` adds module types the caller vouches are 1-Lipschitz and sequential.

    A layer that appears several times in the chain is counted every time (duplicates are kept).
    Call :func:`refresh_norms` first: the bound holds for any sigma, but is tight only when sigma
    has converged.
    """
    allowed = _ONE_LIPSCHITZ + tuple(extra_allowed)
    bound = 1.0
    for name, layer in module.named_modules(remove_duplicate=False):
        if isinstance(layer, (_NormalisedOperator, AOLLinear, AOLConv2d)):
            bound *= layer.certified_norm()
        elif not isinstance(layer, allowed):
            raise ValueError(
                f"cannot certify the Lipschitz constant: module {name or '<root>'!r} "
                f"({type(layer).__name__}) is not known to be a 1-Lipschitz sequential part; "
                "use LipschitzLinear/LipschitzConv2d, MaxMin/ReLU and nn.Sequential, or pass its "
                "type in extra_allowed if you have proven it 1-Lipschitz"
            )
    return bound


def refresh_norms(module: nn.Module, n_iterations: int = 500) -> None:
    """Call :meth:`refresh_norm` (long float64 power iteration) on every Lipschitz layer."""
    for layer in module.modules():
        if isinstance(layer, _NormalisedOperator):
            layer.refresh_norm(n_iterations)
