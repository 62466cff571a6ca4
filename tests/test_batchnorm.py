"""The batch-statistics family over several steps against the float64 references
(normexport.reference.batchnorm): Batch Renorm (clipping active / inactive, schedules, eval ==
BN), CmBN (whole accumulation steps, running statistics), Cross-Iteration BN (window with
weight changes and Taylor compensation, burn-in, variance constraint), plus errors.
The one-call checks of every registry entry are in test_layers.py."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from normexport import registry
from normexport.nn import (BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, CmBN, CmBN1d, CmBN2d,
                           CrossIterationBatchNorm2d, LinearRamp, batch_renorm_warmup)
from normexport.reference import batchnorm as ref

TOL = {"rtol": 1e-10, "atol": 1e-12}


def _np(t):
    return None if t is None else t.detach().double().numpy()


def _close(got, expected, what):
    np.testing.assert_allclose(_np(got) if isinstance(got, torch.Tensor) else got, expected,
                               err_msg=what, **TOL)


def _buffers_match(layer, expected, what):
    bufs = dict(layer.named_buffers())
    for k, v in expected.items():
        _close(bufs[k], v, f"{what}: buffer {k}")


def _fd_directional(f, x, grad, gen, n_dirs=3, h=1e-5):
    """Check ``grad`` (d f / d x at x) against central differences of the float64 reference
    function ``f`` along random directions."""
    for _ in range(n_dirs):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64).numpy()
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        np.testing.assert_allclose(np.sum(grad * v), fd, rtol=1e-6, atol=1e-8)


def _randomized(layer, gen):
    c = layer.num_features
    with torch.no_grad():
        layer.weight.copy_(0.5 + torch.rand(c, generator=gen, dtype=torch.float64))
        layer.bias.copy_(torch.randn(c, generator=gen, dtype=torch.float64) * 0.3)
        layer.running_mean.copy_(torch.randn(c, generator=gen, dtype=torch.float64) * 0.2)
        layer.running_var.copy_(0.8 + 0.4 * torch.rand(c, generator=gen, dtype=torch.float64))
    return layer


# ---- Batch Renorm ---------------------------------------------------------------------------

def _brn_input(gen, n, scale, shift):
    c = len(scale)
    x = torch.randn(n, c, 5, 7, generator=gen, dtype=torch.float64)
    return x * torch.tensor(scale).reshape(1, c, 1, 1) + torch.tensor(shift).reshape(1, c, 1, 1)


@pytest.mark.parametrize("case", ["clipping_mixed", "unclipped"])
def test_batch_renorm_steps_match_reference(case):
    gen = torch.Generator().manual_seed(11)
    r_max, d_max = (1.2, 0.3) if case == "clipping_mixed" else (100.0, 100.0)
    layer = _randomized(BatchRenorm2d(4, momentum=0.2, r_max=r_max, d_max=d_max,
                                      dtype=torch.float64), gen).train()
    scale, shift = [0.5, 1.0, 1.1, 3.0], [-1.0, 0.0, 0.05, 2.0]
    for step in range(4):
        x = _brn_input(gen, 6, scale, shift).requires_grad_()
        before = copy.deepcopy(layer)
        w, b = _np(before.weight), _np(before.bias)
        rm, rv = _np(before.running_mean), _np(before.running_var)
        y_ref, bufs, r, d = ref.batch_renorm_train(_np(x), w, b, rm, rv, step, 0.2, layer.eps,
                                                   r_max, d_max)
        y = layer(x)
        _close(y, y_ref, f"step {step}: output")
        _buffers_match(layer, bufs, f"step {step}")
        clipped = np.isclose(np.abs(np.log(r)), np.log(r_max)) | np.isclose(np.abs(d), d_max)
        if case == "clipping_mixed":
            assert clipped.any() and not clipped.all(), (r, d)
        else:
            assert not clipped.any()
            # unclipped, training output == inference output with the pre-update statistics
            _close(y, ref.batch_norm_eval(_np(x), w, b, rm, rv, layer.eps), "train == eval")
            assert np.abs(r - 1).max() > 0.05 and np.abs(d).max() > 0.05  # not trivially BN
        # gradients: r and d held constant (stop_gradient), not the derivative of the output
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        layer.weight.grad = layer.bias.grad = None
        (y * gy).sum().backward()
        dx, dw, db = ref.batch_renorm_grads(_np(x), _np(gy), w, r, d, layer.eps)
        _close(x.grad, dx, f"step {step}: d x")
        _close(layer.weight.grad, dw, f"step {step}: d weight")
        _close(layer.bias.grad, db, f"step {step}: d bias")


def test_batch_renorm_schedules():
    ramp = batch_renorm_warmup()
    r, d = ramp["r_max"], ramp["d_max"]
    assert [r(s) for s in (0, 5000, 22500, 40000, 10 ** 6)] == [1.0, 1.0, 2.0, 3.0, 3.0]
    assert [d(s) for s in (0, 5000, 15000, 25000, 10 ** 6)] == [0.0, 0.0, 2.5, 5.0, 5.0]
    assert LinearRamp(1.0, 2.0, 10, 20)(12) == pytest.approx(1.2)

    gen = torch.Generator().manual_seed(5)
    layer = _randomized(BatchRenorm2d(3, momentum=0.3, r_max=LinearRamp(1.0, 2.0, 1, 3),
                                      d_max=LinearRamp(0.0, 1.0, 1, 3), dtype=torch.float64),
                        gen).train()
    expected_limits = [(1.0, 0.0), (1.0, 0.0), (1.5, 0.5), (2.0, 1.0), (2.0, 1.0)]
    for step, (r_max, d_max) in enumerate(expected_limits):
        assert layer.limits() == (r_max, d_max) and int(layer.num_batches_tracked) == step
        x = _brn_input(gen, 4, [0.2, 1.0, 4.0], [-3.0, 0.1, 3.0])
        before = copy.deepcopy(layer)
        args = (_np(x), _np(before.weight), _np(before.bias), _np(before.running_mean),
                _np(before.running_var), step, 0.3, layer.eps)
        y_ref, bufs, _, _ = ref.batch_renorm_train(*args, r_max, d_max)
        with torch.no_grad():
            y = layer(x)
        _close(y, y_ref, f"step {step}")
        _buffers_match(layer, bufs, f"step {step}")
        if step < 2:  # r_max = 1, d_max = 0: plain BN
            _close(y, ref.batch_norm_train(*args)[0], f"step {step}: BN")
        else:
            assert np.abs(_np(y) - ref.batch_norm_train(*args)[0]).max() > 1e-2

    # the step counter is BN's num_batches_tracked: saved and restored
    fresh = BatchRenorm2d(3, r_max=LinearRamp(1.0, 2.0, 1, 3), d_max=1.0, dtype=torch.float64)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.limits() == (2.0, 1.0)


@pytest.mark.parametrize("cls,bn,shape", [(BatchRenorm1d, nn.BatchNorm1d, (5, 3)),
                                          (BatchRenorm1d, nn.BatchNorm1d, (5, 3, 9)),
                                          (BatchRenorm2d, nn.BatchNorm2d, (5, 3, 7, 5)),
                                          (BatchRenorm3d, nn.BatchNorm3d, (5, 3, 3, 5, 3))])
def test_batch_renorm_eval_is_bn(cls, bn, shape):
    gen = torch.Generator().manual_seed(2)
    layer = _randomized(cls(3, r_max=2.0, d_max=1.0, dtype=torch.float64), gen).train()
    with torch.no_grad():
        for _ in range(3):
            layer(torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1)
    plain = bn(3, dtype=torch.float64)
    plain.load_state_dict(layer.state_dict())  # same state-dict keys as BN
    layer.eval(), plain.eval()
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    _close(y, ref.batch_norm_eval(_np(x), _np(layer.weight), _np(layer.bias),
                                  _np(layer.running_mean), _np(layer.running_var), layer.eps), "eval")
    torch.testing.assert_close(y, plain(x), rtol=0, atol=0)


def test_batch_renorm_refuses_bad_limits():
    with pytest.raises(ValueError, match="r_max >= 1"):
        BatchRenorm2d(3, r_max=0.5)
    layer = BatchRenorm2d(3, d_max=lambda step: 1.0 if step < 1 else -1.0).train()
    layer(torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="d_max >= 0"):
        layer(torch.randn(2, 3, 3, 3))


# ---- CmBN -----------------------------------------------------------------------------------

def test_cmbn_accumulation_steps_match_reference():
    gen = torch.Generator().manual_seed(3)
    steps = 3
    layer = _randomized(CmBN2d(4, accumulation_steps=steps, momentum=0.25, dtype=torch.float64),
                        gen).train()
    previous = []
    sizes = [2, 3, 5, 4, 2, 2, 3]  # two full steps and the start of a third, unequal sizes
    for i, n in enumerate(sizes):
        x = (torch.randn(n, 4, 5, 3, generator=gen, dtype=torch.float64) * 1.5
             + torch.randn(1, 4, 1, 1, generator=gen, dtype=torch.float64)).requires_grad_()
        before = copy.deepcopy(layer)
        w, b = _np(before.weight), _np(before.bias)
        args = (w, b, _np(before.running_mean), _np(before.running_var),
                int(before.num_batches_tracked), 0.25, layer.eps, steps)
        y_ref, bufs = ref.cmbn_train(previous, _np(x), *args)
        assert layer.accumulated_batches == len(previous)
        y = layer(x)
        _close(y, y_ref, f"mini-batch {i}: output")
        _buffers_match(layer, bufs, f"mini-batch {i}")
        if previous:  # not BN of the mini-batch alone
            bn_alone = ref.batch_norm_train(_np(x), w, b, 0.0, 1.0, 0, 0.1, layer.eps)[0]
            assert np.abs(_np(y) - bn_alone).max() > 1e-2
        # gradient of the current mini-batch (the earlier ones are constants)
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        (y * gy).sum().backward()
        prev = list(previous)
        _fd_directional(lambda z: np.sum(ref.cmbn_train(prev, z, *args)[0] * _np(gy)),
                        _np(x), _np(x.grad), gen)
        previous.append(_np(x))
        if len(previous) == steps:
            previous = []
    assert int(layer.num_batches_tracked) == 2 and layer.accumulated_batches == 1


def test_cmbn_one_step_is_bn_and_eval_is_bn():
    gen = torch.Generator().manual_seed(4)
    layer = _randomized(CmBN1d(3, accumulation_steps=1, dtype=torch.float64), gen).train()
    for i in range(3):
        x = torch.randn(4, 3, 9, generator=gen, dtype=torch.float64) + 0.5
        before = copy.deepcopy(layer)
        y_ref, bufs = ref.batch_norm_train(_np(x), _np(before.weight), _np(before.bias),
                                           _np(before.running_mean), _np(before.running_var),
                                           i, 0.1, layer.eps)
        with torch.no_grad():
            _close(layer(x), y_ref, f"call {i}")
        _buffers_match(layer, bufs, f"call {i}")
    # eval: BN with the running statistics; does not advance the accumulation
    acc = CmBN(3, accumulation_steps=4, dtype=torch.float64)
    acc.load_state_dict(layer.state_dict())
    with torch.no_grad():
        acc.train()(torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64))
        x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
        y = acc.eval()(x)
    assert acc.accumulated_batches == 1
    _close(y, ref.batch_norm_eval(_np(x), _np(acc.weight), _np(acc.bias), _np(acc.running_mean),
                                  _np(acc.running_var), acc.eps), "eval")
    acc.reset_accumulation()
    assert acc.accumulated_batches == 0 and int(acc.acc_count) == 0


def test_cmbn_fresh_layer_first_call():
    gen = torch.Generator().manual_seed(6)
    layer = CmBN2d(3, dtype=torch.float64).train()
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64) * 3
    with torch.no_grad():
        y = layer(x)
    y_ref, bufs = ref.cmbn_train([], _np(x), None, None, np.zeros(3), np.ones(3), 0, 0.1,
                                 layer.eps, 4)
    _close(y, y_ref, "first call")
    _buffers_match(layer, bufs, "first call")
    assert layer.accumulated_batches == 1 and "acc_mean" not in layer.state_dict()


# ---- Cross-Iteration BN ---------------------------------------------------------------------

class _ReferenceCBN:
    """Drives the float64 reference over iterations with its own history (gradients from the
    analytic conv formula, not from the layer)."""

    def __init__(self, layer, conv):
        self.layer, self.conv = layer, conv
        self.history = {k: None for k in ("mean", "sqmean", "grad_mean", "grad_sqmean", "weight")}

    def step(self, x_in, record=True):
        m, conv = self.layer, self.conv
        theta, bias, pad = _np(conv.weight), _np(conv.bias), conv.padding[0]
        y_conv, _ = ref.conv2d(x_in, theta, bias, pad)
        grads = ref.conv2d_stat_grads(x_in, theta, bias, pad) if record else None
        args = (_np(m.weight), _np(m.bias), _np(m.running_mean), _np(m.running_var),
                int(m.num_batches_tracked), m.momentum, m.eps, m.window, m.burn_in, m.rho, theta,
                dict(self.history))
        y, bufs, info = ref.cross_iteration_bn_train(y_conv, *args, grads=grads)
        self.history = {k: bufs.get(f"hist_{k}") for k in self.history}

        def f(z):  # output as a function of the conv input, history and weights fixed
            return ref.cross_iteration_bn_train(ref.conv2d(z, theta, bias, pad)[0], *args)[0]
        return y, bufs, info, f


def _conv_cbn(gen, window=3, burn_in=2, padding=1, rho=1.0, channels=4):
    conv = nn.Conv2d(3, channels, 3, padding=padding, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64) * 0.3)
        conv.bias.copy_(torch.randn(channels, generator=gen, dtype=torch.float64) * 0.2)
    layer = CrossIterationBatchNorm2d(channels, window=window, burn_in=burn_in, rho=rho,
                                      source=conv, momentum=0.2, dtype=torch.float64)
    return conv, _randomized(layer, gen).train()


def test_cross_iteration_bn_iterations_match_reference():
    gen = torch.Generator().manual_seed(7)
    conv, layer = _conv_cbn(gen)
    model = nn.Sequential(conv, layer)
    driver = _ReferenceCBN(layer, conv)
    past_inputs = []
    driver_history_before = {}  # the reference's window before the current iteration
    for it in range(7):
        x_in = (torch.randn(3, 3, 7, 5, generator=gen, dtype=torch.float64) + 0.3).requires_grad_()
        y_ref, bufs, info, f = driver.step(_np(x_in))
        y = model(x_in)
        _close(y, y_ref, f"iteration {it}: output")
        _buffers_match(layer, bufs, f"iteration {it}")
        expected_len = 0 if it < 2 else min(it - 2 + 1, 2)  # burn-in 2, window 3
        assert layer.history_length == expected_len
        if it >= 4:
            # the compensated mean is exact (the mean is linear in the weight): it equals the
            # mean of the stored iterations' inputs re-run through the current weight
            theta, bias = _np(conv.weight), _np(conv.bias)
            means = [ref.conv2d(z, theta, bias, 1)[0].mean(axis=(0, 2, 3))
                     for z in past_inputs[-2:] + [_np(x_in)]]
            np.testing.assert_allclose(info["mean"], np.mean(means, axis=0), rtol=1e-9, atol=1e-12)
            # and the compensation matters
            no_comp_ref = ref.cross_iteration_bn_train(
                ref.conv2d(_np(x_in), theta, bias, 1)[0], None, None, np.zeros(4), np.ones(4), it,
                0.1, layer.eps, 3, 2, 0.0, theta, driver_history_before)[2]
            assert np.abs(no_comp_ref["mean"] - info["mean"]).max() > 1e-3
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        (y * gy).sum().backward()
        _fd_directional(lambda z: np.sum(f(z) * _np(gy)), _np(x_in), _np(x_in.grad), gen, n_dirs=2)
        past_inputs.append(_np(x_in))
        driver_history_before = dict(driver.history)
        with torch.no_grad():  # the weight changes between iterations
            conv.weight.add_(torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64) * 0.05)
            conv.weight.grad = None


def test_cross_iteration_bn_variance_constraint():
    gen = torch.Generator().manual_seed(8)
    conv, layer = _conv_cbn(gen, window=2, burn_in=0, padding=0)
    driver = _ReferenceCBN(layer, conv)
    active_seen = False
    for it in range(3):
        # nearly constant inputs: tiny variance, so a large weight change breaks nu >= mu^2
        x_in = (2.0 + 0.02 * torch.randn(4, 3, 6, 5, generator=gen, dtype=torch.float64))
        y_ref, bufs, info, _ = driver.step(_np(x_in))
        y = layer(conv(x_in))
        _close(y, y_ref, f"iteration {it}")
        _buffers_match(layer, bufs, f"iteration {it}")
        active_seen |= bool(info["constraint_active"].any())
        assert np.all(np.isfinite(_np(y)))
        with torch.no_grad():
            conv.weight.add_(torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64) * 0.5)
    assert active_seen


def test_cross_iteration_bn_without_gradient_uses_window_and_records_nothing():
    gen = torch.Generator().manual_seed(9)
    conv, layer = _conv_cbn(gen, window=3, burn_in=0)
    driver = _ReferenceCBN(layer, conv)
    for it in range(2):
        x_in = torch.randn(3, 3, 5, 5, generator=gen, dtype=torch.float64).requires_grad_()
        driver.step(_np(x_in))
        layer(conv(x_in))
    with torch.no_grad():
        conv.weight.mul_(1.1)
        x_in = torch.randn(3, 3, 5, 5, generator=gen, dtype=torch.float64)
        y_ref, bufs, _, _ = driver.step(_np(x_in), record=False)
        y = layer(conv(x_in))
    assert layer.history_length == 2
    _close(y, y_ref, "no-grad call")
    _buffers_match(layer, bufs, "no-grad call")


def test_cross_iteration_bn_window_one_and_eval_are_bn():
    gen = torch.Generator().manual_seed(10)
    conv, layer = _conv_cbn(gen, window=1, burn_in=0)
    for it in range(2):
        x = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64)
        before = copy.deepcopy(layer)
        y_ref, bufs = ref.batch_norm_train(_np(x), _np(before.weight), _np(before.bias),
                                           _np(before.running_mean), _np(before.running_var), it,
                                           0.2, layer.eps)
        _close(layer(x), y_ref, f"window 1, call {it}")
        _buffers_match(layer, bufs, f"window 1, call {it}")
    x = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64)
    _close(layer.eval()(x), ref.batch_norm_eval(_np(x), _np(layer.weight), _np(layer.bias),
                                                _np(layer.running_mean), _np(layer.running_var),
                                                layer.eps), "eval")


def test_cross_iteration_bn_wiring_errors_and_deepcopy():
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="attach"):
        CrossIterationBatchNorm2d(4, burn_in=0).train()(x)
    with pytest.raises(ValueError, match="dim 0 = 4"):
        CrossIterationBatchNorm2d(4, source=nn.Conv2d(3, 5, 1)).train()(x)
    unrelated = CrossIterationBatchNorm2d(4, source=nn.Conv2d(3, 4, 1)).train()
    with pytest.raises(ValueError, match="does not produce"):
        unrelated(x * 1.0)
    with pytest.raises(TypeError):
        CrossIterationBatchNorm2d(4, source=3)
    # the conv is referenced, not owned; a model copy points to the copied conv
    conv = nn.Conv2d(3, 4, 3)
    model = nn.Sequential(conv, CrossIterationBatchNorm2d(4, source=conv))
    assert len(list(model.parameters())) == 4 and "1.hist_mean" not in model.state_dict()
    twin = copy.deepcopy(model)
    assert twin[1].preceding_weight() is twin[0].weight


def test_registry_examples_exercise_the_methods():
    """The one-call generic tests are not plain BN in disguise."""
    gen = torch.Generator().manual_seed(1)
    spec = registry.REGISTRY["cross_iteration_bn"]
    m = spec.example(6, gen)
    hist = {k: _np(getattr(m, f"hist_{k}")) for k in ("mean", "sqmean", "grad_mean", "grad_sqmean",
                                                       "weight")}
    (x,) = spec.inputs(m, 8, gen)
    _, _, info = ref.cross_iteration_bn_train(_np(x), None, None, np.zeros(6), np.ones(6),
                                              int(m.num_batches_tracked), 0.1, m.eps, m.window,
                                              m.burn_in, m.rho, _np(m.preceding_weight()), hist)
    assert info["constraint_active"].any() and not info["constraint_active"].all()
    m = registry.REGISTRY["cmbn"].example(6, gen)
    assert m.accumulated_batches == m.accumulation_steps - 1
