"""Filter Response Norm + TLU specifics (the generic registry tests are in test_layers.py)."""

import numpy as np
import pytest
import torch

from normexport import registry
from normexport.nn import (TLU, FilterResponseNorm1d, FilterResponseNorm2d, FilterResponseNorm3d,
                           filter_response_norm)
from normexport.reference import frn as frn_ref


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
