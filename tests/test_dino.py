"DINO (dl2021.dino): centering and sharpening in closed form, the loss over pairs of different views, the EMA centre, multi-crop."
import math
import pytest
import torch
import torch.nn.functional as F
from dl2021.dino import (DINO, DINOHead, TeacherTemp, WeightNormLinear, dino_loss, dino_step, entropy, multi_crop,
                         student_logprobs, teacher_probs, teacher_temp, update_center, cls_attention)
from dl2021.ssl import ViT


def test_centering_and_sharpening_closed_form():
    t = torch.tensor([[6., -1., 0.], [4., 1., 0.]])                 # a shared offset of 5 in dimension 0
    c = t.mean(0, keepdim=True)
    for tau in (1., 0.1, 0.04):
        Z = math.exp(1 / tau) + math.exp(-1 / tau) + 1
        want = torch.tensor([[math.exp(1 / tau), math.exp(-1 / tau), 1.], [math.exp(-1 / tau), math.exp(1 / tau), 1.]]) / Z
        torch.testing.assert_close(teacher_probs(t, c, tau), want)
    # sharpening: τ → 0 is one-hot on each row's argmax; τ → ∞ is uniform (entropy log K)
    torch.testing.assert_close(teacher_probs(t, c, 1e-3), torch.tensor([[1., 0., 0.], [0., 1., 0.]]))
    torch.testing.assert_close(entropy(teacher_probs(t, c, 1e4)), torch.full((2,), math.log(3)))
    # without centering the shared offset wins for every image: the collapse centering prevents
    assert (teacher_probs(t, torch.zeros(1, 3), 0.04)[:, 0] > 0.99).all()
    # a lower temperature is sharper
    assert entropy(teacher_probs(t, c, 0.04)).max() < entropy(teacher_probs(t, c, 0.1)).min()
    # the student: a plain log-softmax at its temperature
    torch.testing.assert_close(student_logprobs(t, 0.1), F.log_softmax(t / 0.1, -1))


def test_teacher_probs_are_detached():
    t = torch.randn(3, 5, requires_grad=True)
    assert not teacher_probs(t, torch.zeros(1, 5)).requires_grad


def test_entropy_of_one_hot_and_uniform():
    torch.testing.assert_close(entropy(torch.tensor([[0., 1., 0.], [1 / 3, 1 / 3, 1 / 3]])), torch.tensor([0., math.log(3)]))


def test_center_ema_update():
    c = torch.tensor([[1., -2., 0.5]])
    t = torch.tensor([[0., 2., 1.], [2., 0., 3.], [1., 1., 2.]])
    torch.testing.assert_close(update_center(c, t, 0.9), 0.9 * c + 0.1 * torch.tensor([[1., 1., 2.]]))
    torch.testing.assert_close(update_center(c, t, 0.), t.mean(0, keepdim=True))
    torch.testing.assert_close(update_center(c, t, 1.), c)
    # the model's update uses its momentum, and does nothing with centering off
    m = DINO(ViT(dim=16, depth=1, heads=2), out_dim=3, hidden=8, bottleneck=4, center_momentum=0.9)
    m.center.copy_(c); m.update_center(t)
    torch.testing.assert_close(m.center, 0.9 * c + 0.1 * torch.tensor([[1., 1., 2.]]))
    m.centering = False; m.update_center(t + 100)
    torch.testing.assert_close(m.center, 0.9 * c + 0.1 * torch.tensor([[1., 1., 2.]]))


def _H(p, logq): return -(p * logq).sum(-1).mean()


def test_loss_skips_same_view_pairs():
    g = torch.Generator().manual_seed(0)
    S = [torch.randn(4, 7, generator=g) for _ in range(4)]           # 2 global + 2 local student views
    T = [torch.randn(4, 7, generator=g) for _ in range(2)]           # teacher on the 2 global views
    c = torch.randn(1, 7, generator=g)
    P = [F.softmax((t - c) / 0.04, -1) for t in T]
    L = [F.log_softmax(s / 0.1, -1) for s in S]
    pairs = [(i, v) for i in range(2) for v in range(4) if v != i]
    assert len(pairs) == 6
    want = sum(_H(P[i], L[v]) for i, v in pairs) / len(pairs)
    torch.testing.assert_close(dino_loss(S, T, c, 0.1, 0.04), want)
    every_pair = sum(_H(P[i], L[v]) for i in range(2) for v in range(4)) / 8
    assert abs(dino_loss(S, T, c, 0.1, 0.04) - every_pair) > 1e-3
    # student view 0 is teacher view 0: its gradient comes from teacher view 1 only
    S0 = [s.clone().requires_grad_() for s in S]
    dino_loss(S0, T, c, 0.1, 0.04).backward()
    want0 = torch.autograd.grad(_H(P[1], F.log_softmax(S0[0] / 0.1, -1)) / len(pairs), S0[0])[0]
    torch.testing.assert_close(S0[0].grad, want0)


def test_loss_with_two_views_is_the_symmetric_cross_entropy():
    g = torch.Generator().manual_seed(1)
    S = [torch.randn(5, 6, generator=g) for _ in range(2)]
    T = [torch.randn(5, 6, generator=g) for _ in range(2)]
    c = torch.zeros(1, 6)
    want = (_H(F.softmax(T[0] / 0.04, -1), F.log_softmax(S[1] / 0.1, -1))
            + _H(F.softmax(T[1] / 0.04, -1), F.log_softmax(S[0] / 0.1, -1))) / 2
    torch.testing.assert_close(dino_loss(S, T, c, 0.1, 0.04), want)
    with pytest.raises(ValueError):
        dino_loss(S[:1], T, c)


def test_multi_crop_shapes():
    x = torch.rand(5, 1, 28, 28)
    views = multi_crop(n_local=3, local_size=12)(x)
    assert [tuple(v.shape) for v in views] == [(5, 1, 28, 28)] * 2 + [(5, 1, 12, 12)] * 3
    assert all(0 <= v.min() and v.max() <= 1 for v in views)
    assert len(multi_crop(n_local=0)(x)) == 2
    with pytest.raises(ValueError, match='n_local'):
        multi_crop(n_local=-2)


def test_student_forward_and_step_shapes_and_gradients():
    torch.manual_seed(0)
    m = DINO(ViT(dim=16, depth=1, heads=2), out_dim=32, hidden=16, bottleneck=8)
    views = multi_crop(n_local=2, local_size=12)(torch.rand(6, 1, 28, 28))
    outs = m.student_forward(views)
    assert [tuple(o.shape) for o in outs] == [(6, 32)] * 4
    # grouping by resolution gives the same outputs as one pass per view
    one_by_one = [m.student(v) for v in views]
    for a, b in zip(outs, one_by_one): torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(m.student.parameters(), m.teacher.parameters()))
    out = dino_step(m, (views, None))
    assert out['n'] == 6
    out['loss'].backward()
    assert all(p.grad is not None for p in m.student.parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
    assert m.center.abs().sum() > 0
    h = m.history()
    assert len(h['entropy']) == 1 and 0 <= h['entropy'][0] <= math.log(32) + 1e-5
    assert h['kl'][0] >= -1e-5                                       # the loss is H(P_t) + KL


def test_head_outputs_are_cosines_and_gain_is_frozen():
    head = DINOHead(8, out_dim=20, hidden=16, bottleneck=4)
    assert not head.last_layer.gain.requires_grad
    x = torch.randn(7, 8)
    z = head(x)
    want = F.normalize(head.embed(x), dim=-1) @ F.normalize(head.last_layer.weight, dim=1).T
    torch.testing.assert_close(z, want)
    assert z.abs().max() <= 1 + 1e-6
    assert WeightNormLinear(4, 3, fix_gain=False).gain.requires_grad
    assert any(isinstance(l, torch.nn.BatchNorm1d) for l in DINOHead(8, 20, 16, 4, use_bn=True).mlp)
    assert not any(isinstance(l, torch.nn.BatchNorm1d) for l in head.mlp)


def test_teacher_temperature_warmup():
    assert teacher_temp(0, 10) == 0.04 and teacher_temp(10, 10) == 0.07 and teacher_temp(50, 10) == 0.07
    assert abs(teacher_temp(5, 10) - 0.055) < 1e-12
    assert teacher_temp(0, 0, 0.04, 0.1) == 0.1
    m = DINO(ViT(dim=16, depth=1, heads=2), out_dim=8, hidden=8, bottleneck=4)
    hook = TeacherTemp(m, 4, 0.04, 0.08)
    assert m.tau_t == 0.04
    hook(m, 1); assert abs(m.tau_t - 0.06) < 1e-12
    hook(m, 3); assert m.tau_t == 0.08


def test_cls_attention_maps():
    vit = ViT(dim=16, depth=2, heads=2).eval()
    a = cls_attention(vit, torch.rand(3, 1, 28, 28))
    assert a.shape == (3, 2, 7, 7)
    assert (a >= 0).all() and (a.sum((-2, -1)) <= 1 + 1e-6).all()
    assert cls_attention(vit, torch.rand(2, 1, 12, 12)).shape == (2, 2, 3, 3)


def test_constructor_arguments_are_validated():
    with pytest.raises(ValueError, match='center_momentum'):
        DINO(ViT(dim=16, depth=1, heads=2), out_dim=8, hidden=8, bottleneck=4, center_momentum=1.5)
    with pytest.raises(ValueError, match='temperatures'):
        DINO(ViT(dim=16, depth=1, heads=2), out_dim=8, hidden=8, bottleneck=4, tau_t=0)
