"""Every registry entry's training layer against its float64 reference: forward in train and
eval mode, buffer (running-statistic) updates, gradients (gradcheck for layers written here),
batch-size limits, and a short training run."""

import copy

import numpy as np
import pytest
import torch

from normexport import registry

SPECS = list(registry.REGISTRY.values())
OWN = [s for s in SPECS if all(c.__module__.startswith("normexport.") for c in s.layers)]


def _layer_and_inputs(spec, n, seed, channels=6):
    gen = torch.Generator().manual_seed(seed)
    layer = spec.example(channels, gen)
    return layer, spec.inputs(layer, n, gen)


def _np(ts):
    """Inputs for the reference: floating tensors as float64, others (labels) as they are."""
    return tuple(t.detach().to(torch.float64).numpy() if t.is_floating_point() else t.numpy() for t in ts)


def _double(ts):
    return tuple(t.double() if t.is_floating_point() else t for t in ts)


def _outputs(y):
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


# batch 1 in train mode below a layer's min_train_batch is test_train_batch_below_minimum_is_refused
FORWARD_CASES = [pytest.param(spec, n, mode, id=f"{mode}-{n}-{spec.name}")
                 for spec in SPECS for n in (1, 8) for mode in ("train", "eval")
                 if not (mode == "train" and n < spec.min_train_batch)]


@pytest.mark.parametrize("spec,n,mode", FORWARD_CASES)
def test_forward_and_buffers_match_float64_reference(spec, n, mode):
    layer, inputs = _layer_and_inputs(spec, n, seed=n)
    layer = layer.double().train(mode == "train")
    inputs = _double(inputs)
    before = copy.deepcopy(layer)
    expected = spec.reference(before, _np(inputs), mode == "train")
    with torch.no_grad():
        got = _outputs(layer(*inputs))
    assert len(got) == len(expected.outputs)
    for g, e in zip(got, expected.outputs):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-10, atol=1e-12)
    buffers = dict(layer.named_buffers())
    for name, e in expected.buffers.items():
        np.testing.assert_allclose(buffers[name].double().numpy(), e, rtol=1e-10, atol=1e-12,
                                   err_msg=f"buffer {name}")


@pytest.mark.parametrize("spec", [s for s in SPECS if s.min_train_batch > 1], ids=lambda s: s.name)
def test_train_batch_below_minimum_is_refused(spec):
    layer, inputs = _layer_and_inputs(spec, 1, seed=0)
    with pytest.raises((ValueError, RuntimeError), match=r"(?i)batch|more than 1 value"):
        layer.train()(*inputs)


@pytest.mark.parametrize("spec", OWN, ids=lambda s: s.name)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck(spec, mode):
    layer, inputs = _layer_and_inputs(spec, max(2, spec.min_train_batch), seed=3, channels=3)
    layer = layer.double().train(mode == "train")
    inputs = tuple(t.requires_grad_() if t.is_floating_point() else t for t in _double(inputs))
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]
    buffers = {k: v.clone() for k, v in layer.named_buffers()}

    def f(*args):
        # fresh buffers each call: gradcheck evaluates many times, running stats must not drift
        state = {**{k: v.clone() for k, v in buffers.items()}, **dict(zip(names, args[len(inputs):]))}
        return torch.func.functional_call(layer, state, tuple(args[:len(inputs)]))

    assert torch.autograd.gradcheck(f, (*inputs, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_training_reduces_loss(spec):
    torch.manual_seed(0)
    layer, inputs = _layer_and_inputs(spec, 16, seed=0, channels=8)
    teacher, _ = _layer_and_inputs(spec, 16, seed=1, channels=8)
    x, *rest = inputs
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    scale = torch.nn.Parameter(torch.ones(shape))
    shift = torch.nn.Parameter(torch.zeros(shape))
    with torch.no_grad():
        target = _outputs(teacher.eval()(x * 1.5 - 0.3, *rest))[0]
    opt = torch.optim.Adam(list(layer.parameters()) + [scale, shift], lr=2e-2)
    layer.train()
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(_outputs(layer(x * scale + shift, *rest))[0], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], losses[::10]
