"""Shared helpers of the reference networks: deterministic construction, non-trivial norm
parameters, running statistics calibrated on random batches (so that eval differs from a
freshly initialised layer and the parity tests exercise every parameter)."""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from normexport import registry


def seeded(seed: int = 0):
    """Build under a fixed torch seed without touching the caller's global RNG state."""
    def wrap(factory):
        @functools.wraps(factory)
        def build(*args, **kwargs):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return factory(*args, **kwargs)
        return build
    return wrap


def randomize_norms(model: nn.Module) -> None:
    """The direct parameters of every registry norm layer to non-trivial values: scale-like
    ``weight`` in [0.5, 1.5), ``bias`` and the rest (Switchable Norm's branch weights, FRN's
    tau) ~ N(0, 0.3^2). Condition networks inside a layer (conditional BN's MLP, SPADE's convs)
    keep their own initialisation."""
    with torch.no_grad():
        for m in model.modules():
            if registry.spec_for(m) is None:
                continue
            for name, p in m.named_parameters(recurse=False):
                if name == "weight":
                    p.copy_(0.5 + torch.rand_like(p))
                else:
                    p.copy_(0.3 * torch.randn_like(p))


def calibrate(model: nn.Module, make_batch: Callable[[], tuple], batches: int = 3) -> nn.Module:
    """Running statistics = the exact average over ``batches`` random batches (train-mode
    forwards without gradient, momentum None while calibrating); returns the model in eval."""
    saved = {}
    for m in model.modules():
        if getattr(m, "running_mean", None) is not None and hasattr(m, "momentum"):
            saved[m] = m.momentum
            m.momentum = None
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(*make_batch())
    for m, momentum in saved.items():
        m.momentum = momentum
    return model.eval()


def random_like(example: torch.Tensor, batch: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh random input of the kind of ``example`` (batch ``batch`` if given): floating ->
    standard normal; integer (labels, style indices) -> uniform over [min, max] of the
    example's values, the range it shows to be valid; bool -> coin flips."""
    shape = tuple(example.shape) if batch is None or example.dim() == 0 else (batch, *example.shape[1:])
    if example.is_floating_point():
        return torch.randn(shape, generator=generator).to(example.dtype)
    if example.dtype == torch.bool:
        return torch.rand(shape, generator=generator) < 0.5
    lo, hi = (int(example.min()), int(example.max())) if example.numel() else (0, 0)
    return torch.randint(lo, hi + 1, shape, generator=generator, dtype=example.dtype)
