"""BYOL: the EMA target update in closed form, the cosine schedule of τ, the loss, and no gradient into the target."""
import math
import pytest
import torch
import torch.nn.functional as F
from dl2021.byol import BYOL, byol_loss, byol_step, cosine_tau, TargetUpdate, byol_config
from dl2021.ssl import resnet_backbone


def small_byol():
    torch.manual_seed(0)
    return BYOL(resnet_backbone((4, 8, 8, 8)), 16, 8)


def test_cosine_schedule():
    K = 1000
    assert cosine_tau(0, K, 0.996) == pytest.approx(0.996)
    assert cosine_tau(K, K, 0.996) == pytest.approx(1.)
    assert cosine_tau(K // 2, K, 0.996) == pytest.approx(0.998)
    taus = [cosine_tau(k, K, 0.99) for k in range(K + 1)]
    assert all(a <= b for a, b in zip(taus, taus[1:]))                              # τ only increases
    assert cosine_tau(2 * K, K, 0.99) == pytest.approx(1.)                          # past the end: stays at 1


@pytest.mark.parametrize('tau_base', [0., 0.5, 0.99, 1.])
def test_ema_update_closed_form(tau_base):
    "After one hook call every target parameter is τ ξ + (1-τ) θ, τ from the schedule; buffers are copied."
    m = small_byol()
    with torch.no_grad():
        for p in m.online.parameters(): p.add_(torch.randn_like(p))                 # online and target now differ
        for b in m.online.buffers():
            if b.dtype.is_floating_point: b.add_(1.)
    xi = [p.detach().clone() for p in m.target.parameters()]
    theta = [p.detach().clone() for p in m.online.parameters()]
    hook = TargetUpdate(100, tau_base)
    hook(m, 30)
    tau = cosine_tau(30, 100, tau_base)
    assert hook.taus == [tau]
    for x, t, new in zip(xi, theta, m.target.parameters()):
        assert torch.allclose(new, tau * x + (1 - tau) * t, atol=1e-6)
    for b_t, b_o in zip(m.target.buffers(), m.online.buffers()): assert torch.equal(b_t, b_o)


def test_constant_schedule_and_validation():
    m = small_byol()
    with torch.no_grad():
        for p in m.online.parameters(): p.add_(1.)
    TargetUpdate(10, 0., schedule='constant')(m, 5)
    assert all(torch.equal(a, b) for a, b in zip(m.target.parameters(), m.online.parameters()))
    with pytest.raises(ValueError, match='τ'): TargetUpdate(10, 1.5)
    with pytest.raises(ValueError, match='schedule'): TargetUpdate(10, 0.9, schedule='linear')


def test_byol_loss_is_normalised_mse():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g)
    ref = (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(1)
    assert torch.allclose(byol_loss(p, z), ref, atol=1e-6)
    assert torch.allclose(byol_loss(p, 5 * p), torch.zeros(9), atol=1e-6)


def test_no_gradient_reaches_the_target_and_target_is_saved():
    m = small_byol()
    x = torch.rand(6, 1, 28, 28)
    out = byol_step(m, ((x, x.flip(-1)), None))
    out['loss'].backward()
    assert out['n'] == 6
    assert all(p.grad is not None for p in m.online.parameters())
    assert all(p.grad is None and not p.requires_grad for p in m.target.parameters())
    keys = m.state_dict().keys()
    assert any(k.startswith('target.') for k in keys) and any(k.startswith('predictor.') for k in keys)
    assert m.target is m.ema.module                                                # the EMA updates the saved target


def test_to_moves_the_target_the_ema_updates():
    m = small_byol().to(torch.float64)
    assert next(m.ema.module.parameters()).dtype == torch.float64


def test_config():
    cfg = byol_config('smoke', tau_base=0.9)
    assert cfg.tau_base == 0.9 and cfg.tau_schedule == 'cosine' and cfg.method == 'byol'
