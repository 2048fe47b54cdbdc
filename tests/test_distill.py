"""dl2021.distill: Hinton's loss and its T² factor, the FitNets and RKD losses on known inputs, fidelity, the step
function and the teacher's outputs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from dl2021.distill import (soft_targets, kd_loss, hinton_loss, fitnet_loss, pdist, rkd_distance_loss, fidelity,
                            distill_step, StudentCNN, StudentMLP, student_params, teacher_outputs)
from dl2021.resnet import ResNet


def _zero_mean(*shape, scale=.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g) * scale
    return z - z.mean(-1, keepdim=True)


def _grad(T, z_s, z_t, loss=kd_loss):
    z = z_s.clone().requires_grad_()
    loss(z, z_t, T).backward()
    return z.grad


def test_kd_gradient_scale_matches_the_T2_argument():
    "With the T² factor the soft term's gradient tends to (z - v)/(N·B) as T grows; without it, it would shrink as 1/T²."
    B, N = 32, 10
    z_s, z_t = _zero_mean(B, N, seed=0), _zero_mean(B, N, seed=1)
    limit = (z_s - z_t) / (N * B)
    for T in (8., 16., 32.):
        g = _grad(T, z_s, z_t)
        assert (g - limit).norm() / limit.norm() < 0.05, T
    # the gradient's size does not depend on T (a loss without T² would give a ratio of 4 between T=4 and T=8)
    r = _grad(4., z_s, z_t).norm() / _grad(8., z_s, z_t).norm()
    assert abs(r - 1) < 0.1, r


def test_the_T2_test_fails_without_the_factor():
    B, N = 32, 10
    z_s, z_t = _zero_mean(B, N, seed=0), _zero_mean(B, N, seed=1)
    no_t2 = lambda z, v, T: kd_loss(z, v, T) / T ** 2
    r = _grad(4., z_s, z_t, no_t2).norm() / _grad(8., z_s, z_t, no_t2).norm()
    assert abs(r - 4) < 0.2                                   # what the check above rejects


def test_kd_loss_is_T2_times_the_kl_divergence():
    z_s, z_t = torch.randn(6, 10), torch.randn(6, 10)
    for T in (1., 3.):
        kl = F.kl_div(F.log_softmax(z_s / T, -1), F.log_softmax(z_t / T, -1), reduction='batchmean', log_target=True)
        torch.testing.assert_close(kd_loss(z_s, z_t, T), kl * T * T)
    assert kd_loss(z_t, z_t, 2.) == pytest.approx(0., abs=1e-6)
    with pytest.raises(ValueError, match='positive'): kd_loss(z_s, z_t, 0.)


def test_hinton_loss_mixes_the_two_terms():
    z_s, z_t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    torch.testing.assert_close(hinton_loss(z_s, z_t, y, 4., 0.), F.cross_entropy(z_s, y))
    torch.testing.assert_close(hinton_loss(z_s, z_t, y, 4., 1.), kd_loss(z_s, z_t, 4.))
    torch.testing.assert_close(hinton_loss(z_s, z_t, y, 4., .3), .3 * kd_loss(z_s, z_t, 4.) + .7 * F.cross_entropy(z_s, y))
    with pytest.raises(ValueError, match='alpha'): hinton_loss(z_s, z_t, y, 4., 1.5)


def test_soft_targets_limits():
    z = torch.tensor([3., 1., 0.])
    torch.testing.assert_close(soft_targets(z, 1e5), torch.full((3,), 1 / 3), atol=1e-4, rtol=0)
    assert soft_targets(z, .01)[0] == pytest.approx(1.)


def test_rkd_distance_loss_on_known_inputs():
    s, t = torch.tensor([[0.], [1.], [3.]]), torch.tensor([[0.], [1.], [2.]])
    # ψ_s = (1, 3, 2)/2, ψ_t = (1, 2, 1)·3/4: differences ∓0.25, 0; Huber ½d²; mean over 6 ordered pairs = 1/48
    assert rkd_distance_loss(s, t).item() == pytest.approx(1 / 48, abs=1e-6)
    e = torch.randn(9, 4)
    Q = torch.linalg.qr(torch.randn(4, 4))[0]
    assert rkd_distance_loss(5 * e @ Q + 3, e).item() == pytest.approx(0., abs=1e-6)   # scale, rotation, shift invariant
    big = torch.tensor([[0.], [1.], [10.]])                   # a second case, by the formula
    d_s = torch.tensor([1., 10., 9.]) / (20 / 3); d_t = torch.tensor([1., 2., 1.]) * 3 / 4
    expected = F.smooth_l1_loss(d_s, d_t)
    assert rkd_distance_loss(big, t).item() == pytest.approx(expected.item(), abs=1e-6)


def test_rkd_gradient_reaches_only_the_student_and_is_finite_for_repeated_points():
    s = torch.tensor([[0., 0.], [0., 0.], [1., 2.]], requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    rkd_distance_loss(s, t).backward()
    assert torch.isfinite(s.grad).all() and t.grad is None
    with pytest.raises(ValueError): rkd_distance_loss(torch.randn(3, 2), torch.randn(4, 2))


def test_pdist():
    e = torch.randn(7, 3)
    torch.testing.assert_close(pdist(e), torch.cdist(e, e), atol=1e-5, rtol=1e-5)
    assert torch.equal(pdist(e).diagonal(), torch.zeros(7))


def test_fitnet_loss_on_known_inputs():
    u = torch.randn(2, 3, 4, 4)
    assert fitnet_loss(u, u).item() == 0.
    assert fitnet_loss(u - 3, u).item() == pytest.approx(4.5)     # ½·3²
    g = torch.zeros(1, 2, 1, 1); h = torch.tensor([1., 3.]).reshape(1, 2, 1, 1)
    assert fitnet_loss(g, h).item() == pytest.approx(0.5 * (1 + 9) / 2)
    with pytest.raises(ValueError, match='regressor'): fitnet_loss(u, u[:, :2])


def test_fidelity():
    z = torch.randn(20, 10)
    assert fidelity(z, z) == {'agreement': 1., 'kl': 0.}
    other = z.clone(); other[:5] = -other[:5]                  # the argmax changes on (at least) those rows
    f = fidelity(other, z)
    assert f['agreement'] <= 0.75 and f['kl'] > 0


def test_distill_step_every_method_trains():
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    z_t, hint, feat = torch.randn(8, 10), torch.randn(8, 6, 7, 7), torch.randn(8, 12)
    for method, model in (('ce', StudentCNN()), ('hinton', StudentMLP()), ('fitnet', StudentCNN(hint_channels=6)),
                          ('rkd', StudentCNN())):
        out = distill_step(model, (x, y, z_t, hint, feat), method=method, beta=2.)
        out['loss'].backward()
        assert torch.isfinite(out['loss']) and out['n'] == 8 and 0 <= int(out['correct']) <= 8
        assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match='guided'): distill_step(StudentMLP(), (x, y, z_t, hint, feat), method='fitnet')
    with pytest.raises(ValueError, match='method'): distill_step(StudentMLP(), (x, y, z_t, hint, feat), method='dkd')


def test_student_params_excludes_the_regressor():
    assert student_params(StudentCNN(hint_channels=64)) == student_params(StudentCNN())
    assert student_params(StudentCNN()) == 144 + 32 + 4608 + 64 + 18432 + 128 + 650


def test_teacher_outputs_of_a_resnet():
    torch.manual_seed(0)
    teacher = ResNet((4, 8, 8, 8)).eval()
    x = torch.randn(10, 1, 28, 28)
    z, h, f = teacher_outputs(teacher, x, hint_stage=2, bs=4)
    torch.testing.assert_close(z, teacher(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f, teacher.features(x), atol=1e-5, rtol=1e-5)
    assert h.shape == (10, 8, 7, 7)
    with pytest.raises(ValueError, match='hint_stage'): teacher_outputs(teacher, x, hint_stage=4)
