import pytest
import torch
from torch import nn
import torch.nn.functional as F
from dl2021.diffusion import Schedule, linear_betas, UNet, ddim_sample, ddpm_sample
from dl2021.guidance import (NoisyClassifier, classifier_loss, make_classifier_step, log_prob_grad, classifier_cond_fn,
                             classifier_guided_eps, cfg_eps, within_class_diversity, guided_samples)


class Linear(nn.Module):
    "Logits W·flatten(x): ∇ log softmax(Wx)_y = W_y - Σ_k p_k W_k in closed form."
    def __init__(self, d=16, k=10):
        super().__init__(); self.W = nn.Parameter(torch.randn(k, d))
    def forward(self, x, t): return x.flatten(1) @ self.W.T


def test_classifier_shapes_and_step():
    torch.manual_seed(0)
    clf = NoisyClassifier(ch=8, ch_mult=(1, 2), attn_res=(16,), img_size=32)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    assert clf(x, torch.tensor([0, 10, 500, 999])).shape == (4, 10)
    out = make_classifier_step(Schedule(linear_betas()))(clf, (x, y))
    assert out['n'] == 4 and 0 <= int(out['correct']) <= 4
    loss, logits = classifier_loss(clf, x, y, Schedule(linear_betas()), t=torch.zeros(4, dtype=torch.long))
    assert torch.allclose(loss, F.cross_entropy(logits, y))


def test_log_prob_grad_closed_form():
    torch.manual_seed(0)
    lin, x, y = Linear(), torch.randn(5, 1, 4, 4), torch.tensor([0, 3, 3, 9, 1])
    p = F.softmax(x.flatten(1) @ lin.W.T, -1)
    g = log_prob_grad(lin, x, torch.zeros(5, dtype=torch.long), y)
    assert torch.allclose(g.flatten(1), lin.W[y] - p @ lin.W, atol=1e-5)


def test_classifier_guided_eps_formula():
    torch.manual_seed(0)
    sched = Schedule(linear_betas())
    lin, x, y = Linear(), torch.randn(3, 1, 4, 4), torch.tensor([2, 5, 7])
    base = lambda x, t: torch.ones_like(x)
    t = torch.tensor([0, 400, 999])
    assert torch.equal(classifier_guided_eps(base, lin, y, sched, 0.)(x, t), torch.ones_like(x))
    got = classifier_guided_eps(base, lin, y, sched, 3.)(x, t)
    want = 1 - 3 * sched.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1) * log_prob_grad(lin, x, t, y)
    assert torch.allclose(got, want, atol=1e-5)


def test_guidance_raises_class_probability():
    "One guided step along ε̂ moves x̂_0 towards higher log p(y|x): the sign of the guidance is right."
    torch.manual_seed(0)
    sched = Schedule(linear_betas())
    lin, x, y = Linear(), torch.randn(64, 1, 4, 4), torch.randint(0, 10, (64,))
    t = torch.full((64,), 500)
    eps = classifier_guided_eps(lambda x, t: torch.zeros_like(x), lin, y, sched, 0.5)(x, t)
    x0 = (x - sched.sqrt_one_minus_alpha_bar[500] * eps) / sched.sqrt_alpha_bar[500]
    lp = lambda z: F.log_softmax(lin(z, None), -1)[torch.arange(64), y]
    assert (lp(x0) > lp(x / sched.sqrt_alpha_bar[500])).float().mean() > 0.95


def test_cfg_eps():
    class Toy(nn.Module):
        n_classes = 10
        def forward(self, x, t, y): return x * (y + 1.)[:, None, None, None]
    x, y, t = torch.randn(2, 1, 4, 4), torch.tensor([1, 4]), torch.zeros(2, dtype=torch.long)
    k = torch.tensor([2., 5.])[:, None, None, None]
    assert torch.allclose(cfg_eps(Toy(), y, 0.)(x, t), x * k)
    assert torch.allclose(cfg_eps(Toy(), y, 1.5)(x, t), x * (2.5 * k - 1.5 * 11.))
    assert torch.allclose(cfg_eps(Toy(), y, 1., null=0)(x, t), x * (2 * k - 1.))


def test_within_class_diversity():
    f = torch.tensor([[0., 0.], [3., 4.], [6., 8.], [1., 1.], [1., 1.]])
    # class 0: pairwise distances 5, 10, 5 -> mean 20/3; class 1: 0
    assert abs(within_class_diversity(f, torch.tensor([0, 0, 0, 1, 1])) - 10 / 3) < 1e-9


def test_guided_samples_runs():
    torch.manual_seed(0)
    sched = Schedule(linear_betas())
    net = UNet(ch=8, ch_mult=(1,), n_res=1, attn_res=(), n_classes=10, dropout=0.).eval()
    clf = NoisyClassifier(ch=8, ch_mult=(1,), attn_res=())
    eps = lambda x, t, y: net(x, t, y)
    x, y = guided_samples(eps, 12, sched, steps=2, cond_fn=lambda x, t, y: classifier_cond_fn(clf, y, 2.)(x, t), seed=0, bs=5)
    assert x.shape == (12, 1, 28, 28) and torch.equal(y, torch.arange(12) % 10)
    assert x.min() >= -1 and x.max() <= 1
    x2, _ = guided_samples(lambda x, t, y: cfg_eps(net, y, 1.)(x, t), 12, sched, steps=2, seed=0, bs=5)
    assert torch.isfinite(x2).all()
    x3, _ = guided_samples(lambda x, t, y: cfg_eps(net, y, 1.)(x, t), 12, sched, steps=2, seed=0, bs=12)
    assert x3.shape == x2.shape


def test_classifier_cond_fn_matches_the_eps_wrapper_without_clipping():
    "ADM Algorithm 2 through the sampler hook equals the ε-space wrapper when nothing is clipped."
    torch.manual_seed(0)
    sched = Schedule(linear_betas())
    lin, y = Linear(), torch.tensor([2, 5, 7])
    x_T = torch.randn(3, 1, 4, 4)
    base = lambda x, t: 0.1 * x
    a = ddim_sample(base, None, sched, steps=10, x_T=x_T, clip=False, cond_fn=classifier_cond_fn(lin, y, 2.))
    b = ddim_sample(classifier_guided_eps(base, lin, y, sched, 2.), None, sched, steps=10, x_T=x_T, clip=False)
    assert torch.allclose(a, b, atol=1e-5)
    # Algorithm 1: the ancestral sampler's mean moves by Σ·s·g (one step, no noise at the last step)
    one = Schedule(torch.tensor([0.5]))
    g = log_prob_grad(lin, x_T, torch.zeros(3, dtype=torch.long), y)
    u = ddpm_sample(base, None, one, x_T=x_T, clip=False)
    v = ddpm_sample(base, None, one, x_T=x_T, clip=False, cond_fn=classifier_cond_fn(lin, y, 2.))
    assert torch.allclose(v - u, 0.5 * 2. * g, atol=1e-5)


def test_constructors_validate():
    with pytest.raises(ValueError, match='cannot be halved'): NoisyClassifier(ch_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match='not a resolution'): NoisyClassifier(attn_res=(16,))
    with pytest.raises(ValueError, match='at least one level'): NoisyClassifier(ch_mult=())
    class NoLabels(nn.Module):
        n_classes = None
    with pytest.raises(ValueError, match='class-conditional'): cfg_eps(NoLabels(), torch.tensor([1]))
    with pytest.raises(ValueError, match='at least two'): within_class_diversity(torch.randn(3, 2), torch.tensor([0, 1, 2]))


def test_exact_mixture_guidance():
    "2-class Gaussian mixture with exact scores: s=1 gives the class-conditional Gaussian, s=3 pushes beyond it."
    sched = Schedule(linear_betas())
    mu, s0 = torch.tensor([[-1., 0.], [1., 0.]]), 0.6
    def stats(t):
        ab = sched.alpha_bar[t].view(-1, 1, 1, 1)
        return ab.sqrt() * mu.view(1, 2, 1, 2), ab * s0 ** 2 + 1 - ab
    class Exact(nn.Module):
        def forward(self, x, t):
            m, v = stats(t)
            return -((x - m) ** 2).sum(-1)[:, :, 0] / (2 * v[:, :, 0, 0])
    def eps(x, t):
        m, v = stats(t)
        r = torch.softmax(Exact()(x, t), -1)[:, :, None, None]
        return -(1 - sched.alpha_bar[t]).sqrt().view(-1, 1, 1, 1) * (r * (m - x)).sum(1, keepdim=True) / v
    y = torch.ones(2000, dtype=torch.long)
    out = {s: ddim_sample(classifier_guided_eps(eps, Exact(), y, sched, s), (2000, 1, 1, 2), sched, steps=50, clip=False,
                          generator=torch.Generator().manual_seed(0))[:, 0, 0] for s in (0., 1., 3.)}
    assert abs(float(out[0.][:, 0].mean())) < 0.1                       # unguided: both classes
    assert torch.allclose(out[1.].mean(0), torch.tensor([1., 0.]), atol=0.08)
    assert torch.allclose(out[1.].std(0), torch.tensor([.6, .6]), atol=0.06)
    assert out[3.][:, 0].mean() > 1.3 and out[3.][:, 0].std() < 0.5
    # with the sign of the guidance flipped the samples would go to class 0
    flipped = ddim_sample(classifier_guided_eps(eps, Exact(), 1 - y, sched, 1.), (2000, 1, 1, 2), sched, steps=50,
                          clip=False, generator=torch.Generator().manual_seed(0))[:, 0, 0]
    assert float(flipped[:, 0].mean()) < -0.9
