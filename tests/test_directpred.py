"DirectPred (dl2021.directpred): the predictor formula, the EMA correlation, the step and hooks."
import math
import pytest
import torch
from torch import nn
from dl2021.directpred import (EMACorrelation, directpred_weight, DirectPredictor, LinearPredictor, directpred_byol,
                               directpred_step, PredictorUpdate, eigen_alignment, AlignmentMonitor, directpred_config)
from dl2021.ssl import resnet_backbone


def _rotation(d, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_diagonal_F_gives_the_formula():
    s = torch.tensor([9., 4., 1., 0.01, 0.])
    W = directpred_weight(torch.diag(s), eps=0.01)
    p = (s.sqrt() / s.sqrt().max()) + 0.01                      # √s_j / max_k √s_k + ε
    torch.testing.assert_close(W, torch.diag(p), atol=1e-6, rtol=0)


def test_square_root_not_linear():
    # the classic slip: p_j = s_j / max s (no square root) would give 0.25 here
    W = directpred_weight(torch.diag(torch.tensor([4., 1.])), eps=0.)
    assert W[1, 1].item() == pytest.approx(0.5, abs=1e-6)


def test_rotated_F_rotates_W():
    d = 6
    Q = _rotation(d).float()
    s = torch.tensor([5., 3., 2., 1., 0.5, 0.1])
    F = Q @ torch.diag(s) @ Q.T
    W = directpred_weight(F, eps=0.05)
    expected = Q @ torch.diag(s.sqrt() / s.sqrt().max() + 0.05) @ Q.T
    torch.testing.assert_close(W, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(W, W.T, atol=1e-6, rtol=0)       # symmetric
    # each eigenvector of F is an eigenvector of W with the formula's eigenvalue
    for j in range(d):
        u = Q[:, j]
        torch.testing.assert_close(W @ u, (math.sqrt(s[j] / s.max()) + 0.05) * u, atol=1e-5, rtol=0)


def test_eigenvalue_order_does_not_matter():
    s = torch.tensor([0.1, 4., 1., 2.])
    W = directpred_weight(torch.diag(s), eps=0.)
    torch.testing.assert_close(torch.diag(W), s.sqrt() / 2, atol=1e-6, rtol=0)


def test_negative_eigenvalues_are_clamped():
    W = directpred_weight(torch.diag(torch.tensor([1., -1e-6, -0.5])), eps=0.01)
    torch.testing.assert_close(torch.diag(W), torch.tensor([1.01, 0.01, 0.01]), atol=1e-6, rtol=0)
    assert torch.isfinite(W).all()


def test_zero_matrix_and_floor():
    torch.testing.assert_close(directpred_weight(torch.zeros(3, 3), eps=0.), 1e-4 * torch.eye(3))
    torch.testing.assert_close(directpred_weight(torch.zeros(3, 3), eps=0.2), 0.2 * torch.eye(3))


def test_scale_invariance():
    F = torch.diag(torch.tensor([3., 1., 0.2]))
    torch.testing.assert_close(directpred_weight(F), directpred_weight(100 * F), atol=1e-6, rtol=0)


def test_ema_correlation_update():
    g = torch.Generator().manual_seed(1)
    f1, f2, f3 = (torch.randn(10, 3, generator=g) for _ in range(3))
    c = EMACorrelation(3, rho=0.3)
    c.update(f1)
    torch.testing.assert_close(c.F, f1.T @ f1 / 10)            # the first batch as is
    c.update(f2)
    F2 = 0.3 * f1.T @ f1 / 10 + 0.7 * f2.T @ f2 / 10             # rho weights the OLD estimate
    torch.testing.assert_close(c.F, F2)
    c.update(f3)
    torch.testing.assert_close(c.F, 0.3 * F2 + 0.7 * f3.T @ f3 / 10)
    assert int(c.n) == 3


def test_ema_correlation_is_detached_and_a_buffer():
    c = EMACorrelation(2)
    f = torch.randn(4, 2, requires_grad=True)
    c.update(f * 2)
    assert not c.F.requires_grad
    assert 'F' in c.state_dict() and list(c.parameters()) == []
    with pytest.raises(ValueError, match='rho'):
        EMACorrelation(2, rho=1.)


def test_direct_predictor_update_and_forward():
    d = 5
    dp = DirectPredictor(d, rho=0.5, eps=0.02, freq=3)
    assert list(dp.parameters()) == []
    torch.testing.assert_close(dp.W, torch.eye(d))
    f = torch.randn(32, d)
    dp.corr.update(f)
    dp.update()
    torch.testing.assert_close(dp.W, directpred_weight(f.T @ f / 32, 0.02))
    z = torch.randn(7, d)
    torch.testing.assert_close(dp(z), z @ dp.W.T)
    with pytest.raises(ValueError, match='freq'):
        DirectPredictor(d, freq=0)


def test_step_feeds_F_and_sets_first_W():
    torch.manual_seed(0)
    m = directpred_byol(resnet_backbone((4, 8, 8, 8)), 16, 8)
    x = torch.rand(6, 1, 28, 28)
    out = directpred_step(m, ((x, x.flip(-1)), None))
    assert int(m.predictor.corr.n) == 1
    torch.testing.assert_close(m.predictor.W, directpred_weight(m.predictor.corr.F, 0.01))
    out['loss'].backward()
    assert all(p.grad is not None for p in m.online.parameters())
    assert all(p.grad is None for p in m.target.parameters())


def test_predictor_update_hook_respects_freq():
    m = directpred_byol(resnet_backbone((4, 8, 8, 8)), 16, 8, freq=2)
    m.predictor.corr.update(torch.randn(20, 8))
    W0 = m.predictor.W.clone()
    hook = PredictorUpdate()
    hook(m, 0)                                                   # step 1: not a multiple of 2
    torch.testing.assert_close(m.predictor.W, W0)
    hook(m, 1)                                                   # step 2: update
    torch.testing.assert_close(m.predictor.W, directpred_weight(m.predictor.corr.F, 0.01))


def test_linear_predictor_is_learned_and_tracks_F():
    m = directpred_byol(resnet_backbone((4, 8, 8, 8)), 16, 8, predictor='linear')
    assert isinstance(m.predictor, LinearPredictor)
    x = torch.rand(4, 1, 28, 28)
    directpred_step(m, ((x, x), None))['loss'].backward()
    assert m.predictor.linear.weight.grad is not None and int(m.predictor.corr.n) == 1
    assert m.predictor.W is m.predictor.linear.weight
    with pytest.raises(ValueError, match='predictor must be'):
        directpred_byol(resnet_backbone((4, 8, 8, 8)), 16, 8, predictor='identity')


def test_eigen_alignment():
    d = 6
    Q = _rotation(d, 3).float()
    F = Q @ torch.diag(torch.tensor([6., 5., 4., 3., 2., 1.])) @ Q.T
    r = eigen_alignment(directpred_weight(F), F)
    assert r['alignment'] == pytest.approx(1., abs=1e-6) and r['asymmetry'] == pytest.approx(0., abs=1e-6)
    R = _rotation(d, 4).float()
    assert eigen_alignment(R @ torch.diag(torch.arange(1., d + 1)) @ R.T, F)['alignment'] < 0.99
    A = torch.zeros(d, d); A[0, 1], A[1, 0] = 1., -1.
    assert eigen_alignment(torch.eye(d) + A, F)['asymmetry'] > 0


def test_alignment_monitor():
    m = directpred_byol(resnet_backbone((4, 8, 8, 8)), 16, 8, predictor='linear')
    m.predictor.corr.update(torch.randn(20, 8))
    mon = AlignmentMonitor(every=2)
    for i in range(4): mon(m, i)
    assert mon.history['step'] == [1, 2, 4]


def test_config():
    cfg = directpred_config('smoke')
    assert (cfg.rho, cfg.eps, cfg.freq, cfg.predictor) == (0.3, 0.01, 1, 'directpred')
    assert directpred_config('smoke', eps=0.1).eps == 0.1
