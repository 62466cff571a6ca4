"""Training layers against their float64 references: forward, gradients (gradcheck), a short
training run."""

import numpy as np
import pytest
import torch

from normexport import registry
from normexport.nn import (TLU, FilterResponseNorm1d, FilterResponseNorm2d, FilterResponseNorm3d,
                           filter_response_norm)
from normexport.reference import frn as frn_ref

SPECS = list(registry.REGISTRY.values())


def _input(spec, n, c, size, gen):
    return torch.randn((n, c) + (size,) * spec.spatial_dims, generator=gen, dtype=torch.float64) * 2 + 0.5


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("n", [1, 8])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_matches_float64_reference(spec, n, mode):
    gen = torch.Generator().manual_seed(n)
    layer = spec.example(6, gen).double()
    layer.train(mode == "train")
    x = _input(spec, n, 6, 7, gen)
    with torch.no_grad():
        y = layer(x).numpy()
    np.testing.assert_allclose(y, spec.reference(layer, x.numpy()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_gradcheck(spec):
    gen = torch.Generator().manual_seed(3)
    layer = spec.example(3, gen).double()
    x = _input(spec, 2, 3, 4, gen).requires_grad_()
    params = [p for p in layer.parameters()]
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_training_reduces_loss(spec):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    c = 8
    conv = torch.nn.Conv2d(3, c, 3, padding=1) if spec.spatial_dims == 2 else torch.nn.Conv1d(3, c, 3, padding=1)
    model = torch.nn.Sequential(conv, spec.example(c, gen))
    x = torch.randn((16, 3) + (8,) * spec.spatial_dims, generator=gen)
    target = torch.randn((16, c) + (8,) * spec.spatial_dims, generator=gen).clamp(min=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]


# ---- FRN specifics ---------------------------------------------------------------------

@pytest.mark.parametrize("cls,spatial", [(FilterResponseNorm1d, 1), (FilterResponseNorm2d, 2),
                                         (FilterResponseNorm3d, 3)])
@pytest.mark.parametrize("tlu", [True, False])
@pytest.mark.parametrize("learnable_eps", [True, False])
def test_frn_variants(cls, spatial, tlu, learnable_eps):
    gen = torch.Generator().manual_seed(spatial)
    m = cls(5, eps=1e-3, learnable_eps=learnable_eps, tlu=tlu).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn((2, 5) + (3,) * spatial, generator=gen, dtype=torch.float64)
    eps = 1e-3 + (abs(m.eps_learned.item()) if learnable_eps else 0.0)
    expected = frn_ref.filter_response_norm(x.numpy(), m.weight.detach().numpy(), m.bias.detach().numpy(),
                                            m.tau.detach().numpy() if tlu else None, eps)
    np.testing.assert_allclose(m(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: m(x), (x.requires_grad_(),))


def test_frn_learned_eps_gets_gradient():
    m = FilterResponseNorm2d(2, learnable_eps=True, tlu=False)
    m(torch.full((1, 2, 1, 1), 0.01)).sum().backward()  # 1x1 activations: where learned eps matters
    assert m.eps_learned.grad is not None and m.eps_learned.grad.abs().item() > 0


def test_frn_batch_one_equals_per_sample():
    m = registry.REGISTRY["frn"].example(4, torch.Generator().manual_seed(0))
    x = torch.randn(8, 4, 5, 7)
    full = m(x)
    for i in range(8):
        torch.testing.assert_close(m(x[i:i + 1]), full[i:i + 1])


def test_tlu_matches_max():
    t = TLU(3)
    with torch.no_grad():
        t.tau.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float32)
    np.testing.assert_array_equal(t(x).detach().numpy(),
                                  np.maximum(x.numpy(), np.array([-1.0, 0, 1]).reshape(1, 3, 1, 1)))


@pytest.mark.parametrize("shape,match", [((2, 3, 4, 4), "expected 4 channels"),
                                         ((2, 4, 4), "expected a 4-D input")])
def test_frn_bad_input_names_the_problem(shape, match):
    with pytest.raises(ValueError, match=match):
        FilterResponseNorm2d(4)(torch.randn(shape))


def test_frn_functional_validates():
    with pytest.raises(ValueError, match="gamma has 3 elements but the input has C=4"):
        filter_response_norm(torch.randn(1, 4, 2), torch.ones(3), torch.zeros(4))
    with pytest.raises(ValueError, match="at least one spatial dim"):
        filter_response_norm(torch.randn(1, 4), torch.ones(4), torch.zeros(4))
