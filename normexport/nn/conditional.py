"""Conditional Batch Norm (NORMS.md row 15) and Conditional Instance Norm (row 16).

Conditional BN, two forms (both: parameter-free BN of x with batch statistics in training
(synchronised over ``process_group``), torch's running-stat update, running stats in eval):

- :class:`ConditionalBatchNorm2d`, de Vries, Strub, Mary, Larochelle, Pietquin, Courville,
  "Modulating early visual processing by language", NeurIPS 2017:

      gamma_hat[n] = gamma + dgamma(e[n]),   beta_hat[n] = beta + dbeta(e[n])
      y[n, c]      = gamma_hat[n, c] * (x[n, c] - mu_c) / sqrt(var_c + eps) + beta_hat[n, c]

  with dgamma, dbeta two MLPs of the condition vector e (N, cond_features), as the paper's
  ``dbeta = MLP(e_q), dgamma = MLP(e_q)``: one hidden layer with ReLU (``hidden_features``;
  ``None``: a single linear map). Choice: the output layer of each MLP starts at zero, so the
  layer starts as plain BN with (gamma, beta) -- the paper's aim of leaving the pretrained
  network intact at the start of training.
- :class:`CategoricalConditionalBatchNorm2d`, projection-discriminator / BigGAN style (Miyato &
  Koyama 2018, the generator's categorical conditional BN; Brock et al. 2019): per-class
  gamma, beta rows of a (num_classes, C) table selected by integer labels (N,):

      y[n, c] = gamma[label[n], c] * x_hat[n, c] + beta[label[n], c]

  gamma rows start at 1 and beta rows at 0 (as the SNGAN-projection code). BigGAN's
  ``gain = 1 + linear(y)`` form is the MLP form above with ``hidden_features=None``.

Conditional IN, :class:`ConditionalInstanceNorm2d`, Dumoulin, Shlens, Kudlur, "A Learned
Representation For Artistic Style", ICLR 2017:

      y[n, c] = gamma^s[c] * (x[n, c] - mu_nc) / sqrt(var_nc + eps) + beta^s[c]

with IN statistics (per sample and channel over (H, W), biased variance) in train and eval
(no running statistics, as the paper) and a (num_styles, C) table for gamma and beta. The style
is an integer index per sample (N,) or a weight vector per sample (N, num_styles): then
gamma = sum_s w[n, s] gamma^s (likewise beta), the paper's convex combination for style
interpolation. The weights are used as given (not renormalised): non-convex weights
extrapolate between styles.

Labels and style indices are checked (integer dtype, shape (N,), range) with errors naming the
layer; the range check reads the values and is skipped while torch.export / torch.compile
traces the layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._bn_branch import _BatchStatsMixin, channel_view, check_input, instance_normalize

__all__ = ["ConditionalBatchNorm2d", "CategoricalConditionalBatchNorm2d", "ConditionalInstanceNorm2d"]


def _check_labels(layer: str, labels: torch.Tensor, n: int, num: int, what: str) -> None:
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{layer}: {what} must be an integer tensor (LongTensor), got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{layer}: expected {what} of shape ({n},) for a batch of {n}, got shape "
                         f"{tuple(labels.shape)}")
    if labels.numel() and not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num:
            raise ValueError(f"{layer}: {what} must be in [0, {num - 1}] ({num} entries), got values "
                             f"in [{lo}, {hi}]")


def _mlp(in_features: int, hidden: int | None, out_features: int, fk) -> nn.Sequential:
    layers = ([nn.Linear(in_features, hidden, **fk), nn.ReLU(), nn.Linear(hidden, out_features, **fk)]
              if hidden else [nn.Linear(in_features, out_features, **fk)])
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class _ConditionalBatchNorm2d(_BatchStatsMixin, nn.Module):
    def __init__(self, num_features: int, eps: float, momentum: float | None,
                 track_running_stats: bool, process_group, device, dtype):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"{type(self).__name__}: num_features must be positive, got {num_features}")
        if eps < 0:
            raise ValueError(f"{type(self).__name__}: eps must be >= 0, got {eps}")
        self.num_features = num_features
        self.eps = float(eps)
        self._init_batch_stats(num_features, momentum, track_running_stats, process_group, None,
                               device, dtype)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._batch_stats(x)
        return (x - channel_view(mean, 4)) * torch.rsqrt(channel_view(var, 4) + self.eps)


class ConditionalBatchNorm2d(_ConditionalBatchNorm2d):
    """Conditional BN (de Vries et al. 2017): gamma + dgamma(e), beta + dbeta(e) from two MLPs
    of a condition vector. ``forward(x (N, C, H, W), cond (N, cond_features))``."""

    def __init__(self, num_features: int, cond_features: int, hidden_features: int | None = None,
                 eps: float = 1e-5, momentum: float | None = 0.1, track_running_stats: bool = True,
                 process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, track_running_stats, process_group, device, dtype)
        if cond_features <= 0:
            raise ValueError(f"ConditionalBatchNorm2d: cond_features must be positive, got {cond_features}")
        fk = {"device": device, "dtype": dtype}
        self.cond_features = cond_features
        self.hidden_features = hidden_features
        self.weight = nn.Parameter(torch.ones(num_features, **fk))
        self.bias = nn.Parameter(torch.zeros(num_features, **fk))
        self.mlp_gamma = _mlp(cond_features, hidden_features, num_features, fk)
        self.mlp_beta = _mlp(cond_features, hidden_features, num_features, fk)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        check_input("ConditionalBatchNorm2d", x, 4, self.num_features)
        if cond.dim() != 2 or cond.shape != (x.shape[0], self.cond_features):
            raise ValueError(f"ConditionalBatchNorm2d: expected cond of shape ({x.shape[0]}, "
                             f"{self.cond_features}), got {tuple(cond.shape)}")
        if not cond.is_floating_point():
            raise ValueError(f"ConditionalBatchNorm2d: cond must be a floating tensor, got {cond.dtype}")
        x_hat = self._normalize(x)  # after the checks: a refused call leaves the running stats alone
        gamma = self.weight + self.mlp_gamma(cond)
        beta = self.bias + self.mlp_beta(cond)
        return x_hat * channel_view(gamma, 4) + channel_view(beta, 4)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, cond_features={self.cond_features}, hidden_features="
                f"{self.hidden_features}, eps={self.eps}, momentum={self.momentum}")


class CategoricalConditionalBatchNorm2d(_ConditionalBatchNorm2d):
    """Class-conditional BN (projection-discriminator / BigGAN style): per-class gamma, beta.
    ``forward(x (N, C, H, W), labels (N,) LongTensor)``."""

    def __init__(self, num_features: int, num_classes: int, eps: float = 1e-5,
                 momentum: float | None = 0.1, track_running_stats: bool = True,
                 process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, track_running_stats, process_group, device, dtype)
        if num_classes <= 0:
            raise ValueError(f"CategoricalConditionalBatchNorm2d: num_classes must be positive, got {num_classes}")
        fk = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.ones(num_classes, num_features, **fk))
        self.bias = nn.Parameter(torch.zeros(num_classes, num_features, **fk))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_input("CategoricalConditionalBatchNorm2d", x, 4, self.num_features)
        _check_labels("CategoricalConditionalBatchNorm2d", labels, x.shape[0], self.num_classes, "labels")
        x_hat = self._normalize(x)
        gamma = F.embedding(labels, self.weight)
        beta = F.embedding(labels, self.bias)
        return x_hat * channel_view(gamma, 4) + channel_view(beta, 4)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_classes={self.num_classes}, eps={self.eps}, momentum={self.momentum}"


class ConditionalInstanceNorm2d(nn.Module):
    """Conditional IN (Dumoulin et al. 2017): IN with a per-style gamma^s, beta^s table.
    ``forward(x (N, C, H, W), style)`` with ``style`` a LongTensor (N,) of style indices or a
    floating (N, num_styles) tensor of mixing weights."""

    def __init__(self, num_features: int, num_styles: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        if num_features <= 0 or num_styles <= 0:
            raise ValueError(f"ConditionalInstanceNorm2d: num_features and num_styles must be positive, "
                             f"got {num_features}, {num_styles}")
        if eps < 0:
            raise ValueError(f"ConditionalInstanceNorm2d: eps must be >= 0, got {eps}")
        fk = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.num_styles = num_styles
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(num_styles, num_features, **fk))
        self.bias = nn.Parameter(torch.zeros(num_styles, num_features, **fk))

    def style_params(self, style: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (gamma, beta), each (n, C), for style indices (n,) or weights (n, S)."""
        if style.is_floating_point():
            if style.dim() != 2 or style.shape != (n, self.num_styles):
                raise ValueError(f"ConditionalInstanceNorm2d: expected style weights of shape ({n}, "
                                 f"{self.num_styles}) or style indices of shape ({n},), got float "
                                 f"shape {tuple(style.shape)}")
            return style @ self.weight, style @ self.bias
        _check_labels("ConditionalInstanceNorm2d", style, n, self.num_styles, "style indices")
        return F.embedding(style, self.weight), F.embedding(style, self.bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        check_input("ConditionalInstanceNorm2d", x, 4, self.num_features)
        gamma, beta = self.style_params(style, x.shape[0])
        return instance_normalize(x, self.eps) * channel_view(gamma, 4) + channel_view(beta, 4)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_styles={self.num_styles}, eps={self.eps}"
