"Tests of dl2021.diffusion and dl2021.fid (CPU, a few seconds)."
import math
import torch
import pytest
from dl2021.diffusion import (linear_betas, cosine_betas, Schedule, q_sample, q_posterior, UNet, ddpm_loss,
                              make_diffusion_step, ddpm_sample, ddim_sample, respace, respaced_steps, extract, predict_x0,
                              TimestepResBlock, SelfAttention, as_eps_fn, sample_many, chapter_unet, make_unet,
                              make_schedule, CHAPTER_RECIPES)
from dl2021.fid import (fid_from_feats, frechet_distance, sqrtm_psd, get_extractor, weights_path, features, pad_to_32,
                        fid_with_floor, FID_WEIGHTS_SHA256, FID_EXTRACTOR_ID, sha256_file, gaussian_stats)


def test_schedules():
    b = linear_betas()
    assert b.shape == (1000,) and math.isclose(b[0].item(), 1e-4) and math.isclose(b[-1].item(), 0.02)
    # Improved DDPM scales both ends by 1000/T: at T = 4000 the schedule runs 2.5e-5 … 0.005 (not 1e-4 … 0.02)
    b4 = linear_betas(4000)
    assert math.isclose(b4[0].item(), 2.5e-5) and math.isclose(b4[-1].item(), 0.005)
    # ... so ᾱ_T stays near 0 for any T (unscaled, T = 4000 would give ᾱ_T ≈ 1e-18; scaled it matches T = 1000)
    assert math.isclose(Schedule(b4).alpha_bar[-1].item(), Schedule(b).alpha_bar[-1].item(), rel_tol=0.05)
    c = cosine_betas()
    s = Schedule(c)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    assert math.isclose(s.alpha_bar[499].item(), f(500) / f(0), rel_tol=1e-5)   # ᾱ_t = f(t)/f(0)
    assert c.max() <= 0.999
    s = Schedule(b)
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - b, 0).float())
    assert s.beta_tilde[0] == 0 and (s.beta_tilde[1:] < s.betas[1:]).all()


def test_closed_form_matches_iterated_forward_process():
    "q(x_t | x_0) in one step has the mean and variance of t one-step noisings (statistically)."
    s = Schedule(linear_betas())
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.9, -0.5, 0.0]).repeat(40_000, 1)
    x, t = x0.clone(), 250
    for i in range(t): x = (1 - s.betas[i]).sqrt() * x + s.betas[i].sqrt() * torch.randn(x.shape, generator=g)
    xt = q_sample(x0, torch.full((len(x0),), t - 1), torch.randn(x0.shape, generator=g), s)
    assert torch.allclose(x.mean(0), xt.mean(0), atol=0.03) and torch.allclose(x.var(0), xt.var(0), atol=0.03)
    assert torch.allclose(xt.mean(0), s.sqrt_alpha_bar[t - 1] * x0[0], atol=0.03)
    assert torch.allclose(xt.var(0), (1 - s.alpha_bar[t - 1]).expand(3), atol=0.03)


def test_posterior_is_bayes():
    "μ̃_t, β̃_t equal the Gaussian conditioning of q(x_{t-1}|x_0) q(x_t|x_{t-1}) (scalar check)."
    s = Schedule(linear_betas())
    t = 400
    ab_prev, a = s.alpha_bar[t - 1].double(), s.alphas[t].double()
    x0, xt = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.2, dtype=torch.float64)
    prior_var, lik_var = 1 - ab_prev, 1 - a                          # x_{t-1} ~ N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1}); x_t|x_{t-1} ~ N(√α x, β)
    post_var = 1 / (1 / prior_var + a / lik_var)
    post_mean = post_var * (ab_prev.sqrt() * x0 / prior_var + a.sqrt() * xt / lik_var)
    mean, var = q_posterior(x0.float().view(1, 1, 1, 1), xt.float().view(1, 1, 1, 1), torch.tensor([t]), s)
    assert math.isclose(mean.item(), post_mean.item(), rel_tol=1e-4) and math.isclose(var.item(), post_var.item(), rel_tol=1e-4)


def test_unet_shapes_and_param_count():
    m = UNet(ch=16, ch_mult=(1, 2), n_res=1, attn_res=(16,), n_classes=10, img_size=32)
    x = torch.randn(3, 1, 32, 32)
    assert m(x, torch.tensor([0, 5, 999]), torch.tensor([0, 9, 10])).shape == (3, 1, 32, 32)
    assert m(x, torch.tensor([0, 5, 999])).shape == (3, 1, 32, 32)              # no label = token n_classes
    assert UNet(c_in=2, c_out=2, ch=16, ch_mult=(1,), attn_res=())(torch.randn(1, 2, 28, 28), torch.tensor([3])).shape == (1, 2, 28, 28)
    # DDPM's CIFAR-10 network (32px, ch 128, mult 1,2,2,2, attention at 16) has 35.7M parameters (Ho et al. Appendix B)
    n = sum(p.numel() for p in UNet(c_in=3, c_out=3, ch=128, ch_mult=(1, 2, 2, 2), attn_res=(16,), img_size=32).parameters())
    assert abs(n / 1e6 - 35.7) < 0.1
    # the cpu model of the chapter: no attention anywhere
    cpu = make_unet(CHAPTER_RECIPES['cpu'])
    assert not any(isinstance(mod, SelfAttention) for mod in cpu.modules())
    assert any(isinstance(mod, TimestepResBlock) for mod in cpu.modules())


@pytest.mark.parametrize('kw, msg', [(dict(ch_mult=()), 'at least one level'),
                                     (dict(n_res=0), 'n_res'),
                                     (dict(ch_mult=(1, 2, 2, 2)), 'cannot be halved'),        # 28 -> 14 -> 7 -> 3.5
                                     (dict(attn_res=(16,)), 'not a resolution'),              # 16 is a 32px level
                                     (dict(heads=3), 'heads')])
def test_unet_validates_its_configuration(kw, msg):
    with pytest.raises(ValueError, match=msg): UNet(**kw)


def test_other_constructors_validate():
    with pytest.raises(ValueError, match=r'\(0, 1\]'): Schedule(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match='respace'): Schedule(torch.tensor([0.1, 0.2]), timesteps=[0])
    with pytest.raises(ValueError, match='positive'): linear_betas(0)
    with pytest.raises(ValueError, match='too short'): linear_betas(10)   # β_T would be 2
    with pytest.raises(ValueError, match='needs labels=True'): make_diffusion_step(Schedule(linear_betas(100)), p_uncond=0.1)
    with pytest.raises(ValueError, match='probability'): make_diffusion_step(Schedule(linear_betas(100)), labels=True, p_uncond=1.5)
    with pytest.raises(ValueError, match="'linear' or 'cosine'"): make_schedule(dict(schedule='sigmoid', T=10))
    with pytest.raises(ValueError, match='eta'): ddim_sample(lambda x, t: x, (1, 1, 4, 4), Schedule(linear_betas(100)), steps=2, eta=-1)
    with pytest.raises(ValueError, match='var'): ddpm_sample(lambda x, t: x, (1, 1, 4, 4), Schedule(linear_betas(100)), var='large')
    with pytest.raises(ValueError, match='own name'):
        chapter_unet(CHAPTER_RECIPES['smoke'], loss_fn=lambda m, x, s, y=None: ddpm_loss(m, x, s, y))


def test_loss_and_step():
    s = Schedule(linear_betas(100))
    zero = lambda x, t, y=None: torch.zeros_like(x)
    assert abs(ddpm_loss(zero, torch.randn(256, 1, 8, 8), s).item() - 1) < 0.05
    m = UNet(ch=16, ch_mult=(1,), n_res=1, attn_res=(), n_classes=10)
    out = make_diffusion_step(s, labels=True, p_uncond=0.5)(m, (torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])))
    out['loss'].backward()
    assert out['loss'].ndim == 0 and all(p.grad is not None for p in m.parameters())
    # learned-variance outputs: only the first half enters L_simple
    two = lambda x, t: torch.cat([torch.zeros_like(x), 100 + torch.zeros_like(x)], 1)
    assert abs(ddpm_loss(two, torch.randn(256, 1, 8, 8), s).item() - 1) < 0.05


def test_respace():
    s = Schedule(linear_betas())
    r, S = respace(s, 1000)
    assert torch.equal(S, torch.arange(1000)) and torch.allclose(r.betas, s.betas, atol=1e-7)
    r, S = respace(s, 25)
    assert r.T == 25 and S[0] == 0 and S[-1] == 999 and torch.equal(r.timesteps, S)
    assert torch.allclose(r.alpha_bar, s.alpha_bar[S], rtol=1e-5)
    # improved-diffusion's space_timesteps (one section): stride (T-1)/(K-1), rounded
    even = [round(i * 999 / 9) for i in range(10)]
    assert respaced_steps(1000, 10).tolist() == even
    # the DDIM paper's code: range(0, T, T // K)
    assert respaced_steps(1000, 50, 'ddim').tolist() == list(range(0, 1000, 20))
    assert respaced_steps(1000, 10, 'quad').tolist() == [int(v) for v in (torch.linspace(0, math.sqrt(800), 10, dtype=torch.float64) ** 2)]
    r, S = respace(s, 50, 'ddim')
    assert torch.allclose(r.alpha_bar, s.alpha_bar[S], rtol=1e-5) and S[-1] == 980
    with pytest.raises(ValueError, match='spacing'): respaced_steps(1000, 10, 'uniform')
    with pytest.raises(ValueError, match='1 <= steps'): respace(s, 1001)


@pytest.mark.parametrize('sampler', ['ddpm', 'ddpm_respaced', 'ddim', 'ddim_eta1', 'ddim_spacing_ddim'])
def test_samplers_recover_the_data_with_an_oracle(sampler):
    "If the data is one image x*, the exact ε is (x_t - √ᾱ_t x*)/√(1-ᾱ_t); every sampler must land on x*."
    s = Schedule(linear_betas())
    x_star = torch.rand(1, 8, 8) * 2 - 1
    seen = []
    def oracle(x, t):
        seen.append(int(t[0]))
        return (x - extract(s.sqrt_alpha_bar, t) * x_star) / extract(s.sqrt_one_minus_alpha_bar, t)
    g = torch.Generator().manual_seed(0)
    if sampler == 'ddpm': out = ddpm_sample(oracle, (3, 1, 8, 8), s, generator=g)
    elif sampler == 'ddpm_respaced': out = ddpm_sample(oracle, (3, 1, 8, 8), respace(s, 40)[0], generator=g)
    elif sampler == 'ddim': out = ddim_sample(oracle, (3, 1, 8, 8), s, steps=20, generator=g)
    elif sampler == 'ddim_eta1': out = ddim_sample(oracle, (3, 1, 8, 8), s, steps=20, eta=1., generator=g)
    else: out = ddim_sample(oracle, (3, 1, 8, 8), s, steps=20, spacing='ddim', generator=g)
    assert torch.allclose(out, x_star.expand(3, -1, -1, -1), atol=1e-3)
    assert seen[0] == (950 if sampler == 'ddim_spacing_ddim' else 999) and seen[-1] == 0   # the network is told the original steps


def test_ddim_eta0_is_deterministic_and_ddpm_uses_generator():
    s = Schedule(linear_betas())
    f = lambda x, t: 0.1 * x
    x_T = torch.randn(2, 1, 8, 8)
    a = ddim_sample(f, None, s, steps=10, x_T=x_T, generator=torch.Generator().manual_seed(0))
    b = ddim_sample(f, None, s, steps=10, x_T=x_T, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    c = ddpm_sample(f, (2, 1, 8, 8), respace(s, 10)[0], generator=torch.Generator().manual_seed(0))
    d = ddpm_sample(f, (2, 1, 8, 8), respace(s, 10)[0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(c, d)


def test_cond_fn_hooks():
    "ddpm_sample adds Σ·cond_fn to the mean (ADM Algorithm 1); ddim_sample subtracts √(1-ᾱ)·cond_fn from ε (Algorithm 2)."
    one = Schedule(torch.tensor([0.5]))                     # a single step: x_0 = mean (+ Σ·g), no noise
    x_T, c = torch.randn(4, 1, 4, 4), 0.3
    f = lambda x, t: 0.1 * x
    a = ddpm_sample(f, None, one, x_T=x_T, clip=False)
    b = ddpm_sample(f, None, one, x_T=x_T, clip=False, cond_fn=lambda x, t: torch.full_like(x, c))
    assert torch.allclose(b - a, torch.full_like(a, 0.5 * c), atol=1e-6)   # Σ = β = 0.5
    s = Schedule(linear_betas(100))
    g = lambda x, t: torch.full_like(x, c)
    shifted = lambda x, t: f(x, t) - extract(s.sqrt_one_minus_alpha_bar, t) * g(x, t)
    # without clipping, the hook equals shifting ε by hand (the classifier_guided_eps form of notebook 22)
    u = ddim_sample(f, None, s, steps=10, x_T=x_T, clip=False, cond_fn=g)
    v = ddim_sample(shifted, None, s, steps=10, x_T=x_T, clip=False)
    assert torch.allclose(u, v, atol=1e-5)
    # with clipping the order matters: the hook guides the ε re-derived from the clipped x̂_0 (guided-diffusion's order)
    # one step from t = T: the hook moves x̂_0 = clip(...) = 1 by (1-ᾱ)/√ᾱ · c; guiding the raw ε first is undone by the clip
    big = lambda x, t: -5 * torch.ones_like(x)               # x̂_0 far above 1: clipping is active
    w1 = ddim_sample(big, None, s, steps=1, x_T=x_T, cond_fn=g)
    w2 = ddim_sample(lambda x, t: big(x, t) - extract(s.sqrt_one_minus_alpha_bar, t) * g(x, t), None, s, steps=1, x_T=x_T)
    ab = s.alpha_bar[-1]
    assert torch.allclose(w2, torch.ones_like(w2)) and torch.allclose(w1, 1 + (1 - ab) / ab.sqrt() * c, rtol=1e-4)


def test_as_eps_fn_and_sample_many():
    m = UNet(c_out=2, ch=8, ch_mult=(1,), n_res=1, attn_res=(), mid_attn=False, dropout=0.).eval()
    e, v = as_eps_fn(m, learned_var=True)(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))
    assert e.shape == v.shape == (2, 1, 28, 28) and e.dtype == torch.float32
    out = sample_many(lambda shape, g: torch.randn(shape, generator=g), 7, 3, (1, 4, 4), seed=0)
    assert out.shape == (7, 1, 4, 4)
    assert torch.equal(out, sample_many(lambda shape, g: torch.randn(shape, generator=g), 7, 3, (1, 4, 4), seed=0))


def test_chapter_unet_is_cached(tmp_path, monkeypatch):
    "The first call trains and stores the EMA weights; the second loads the same weights instead of training."
    monkeypatch.setenv('DL2021_CHECKPOINTS', str(tmp_path))
    recipe = CHAPTER_RECIPES['smoke']
    m1, meta1 = chapter_unet(recipe, seed=1, log=False)
    m2, meta2 = chapter_unet(recipe, seed=1, log=False)
    assert not meta1['cached'] and meta2['cached'] and meta2['steps'] == meta1['steps'] == 4
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    _, meta3 = chapter_unet(recipe, seed=2, log=False)       # another seed is another model
    assert not meta3['cached'] and len(list(tmp_path.glob('*.pt'))) == 2


def test_fid_extractor_is_the_committed_one(tmp_path):
    assert sha256_file(weights_path()) == FID_WEIGHTS_SHA256 and FID_WEIGHTS_SHA256[:12] in FID_EXTRACTOR_ID
    ext = get_extractor()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    f28, f32 = features(ext, x), features(ext, pad_to_32(x))
    assert f28.shape == (3, 128) and torch.equal(f28, f32)                   # 28×28 is padded with the background -1
    assert torch.equal(pad_to_32(x)[:, :, :2], -torch.ones(3, 1, 2, 32))
    with pytest.raises(ValueError, match='28×28 or 32×32'): pad_to_32(torch.zeros(1, 1, 30, 30))
    bad = tmp_path / 'w.pt'
    bad.write_bytes(weights_path().read_bytes() + b'x')                      # one byte more: another extractor
    with pytest.raises(ValueError, match='SHA-256'): get_extractor(path=bad)
    with pytest.raises(FileNotFoundError, match='git checkout'): get_extractor(path=tmp_path / 'missing.pt')


def test_fid_with_floor():
    g = torch.Generator().manual_seed(0)
    ref, real, gen = (torch.randn(n, 4, generator=g) for n in (2000, 1000, 500))
    fid, floor = fid_with_floor(gen + 1, ref, real)
    assert abs(fid - 4) < 0.3 and floor == fid_from_feats(real[:500], ref)   # the floor uses as many real features
    with pytest.raises(ValueError, match='as many real'): fid_with_floor(gen, ref, real[:100])
    with pytest.raises(ValueError, match='N >= 2'): gaussian_stats(torch.zeros(1, 4))


def test_fid_closed_forms():
    mu1, mu2 = torch.tensor([0., 1., 2.], dtype=torch.float64), torch.tensor([1., 1., 0.], dtype=torch.float64)
    s1 = torch.diag(torch.tensor([1., 4., 9.], dtype=torch.float64)); s2 = torch.diag(torch.tensor([4., 1., 1.], dtype=torch.float64))
    assert math.isclose(frechet_distance(mu1, s1, mu2, s2), 5 + 6, rel_tol=1e-9)          # ‖Δμ‖² + Σ(σ1-σ2)²
    A = torch.randn(6, 6, dtype=torch.float64); S = A @ A.T
    assert torch.allclose(sqrtm_psd(S) @ sqrtm_psd(S), S, atol=1e-8)
    # 1-d Gaussians: (μ1-μ2)² + (σ1-σ2)²
    assert math.isclose(frechet_distance(mu1[:1], torch.eye(1, dtype=torch.float64) * 4, mu2[:1], torch.eye(1, dtype=torch.float64) * 9), 1 + 1, rel_tol=1e-9)
    f = torch.randn(1000, 16)
    assert abs(fid_from_feats(f, f)) < 1e-6
    g = torch.Generator().manual_seed(0)
    big1, big2 = torch.randn(200_000, 2, generator=g), torch.randn(200_000, 2, generator=g) * 2 + 1
    assert abs(fid_from_feats(big1, big2) - (2 + 2)) < 0.05                                 # 2·1² + 2·(2-1)²


def test_improved_ddpm_pieces():
    from dl2021.improved_ddpm import (normal_kl, discretized_gaussian_log_likelihood, vb_terms, hybrid_loss, nll_bpd,
                                      std_normal_cdf, p_mean_logvar)
    from dl2021.diffusion import learned_log_variance
    s = Schedule(cosine_betas(20))
    t = torch.tensor([5])
    # Σ_θ interpolates log β_t (v = 1) and log β̃_t (v = -1)
    assert torch.allclose(learned_log_variance(torch.ones(1, 1, 1, 1), t, s).flatten(), s.log_betas[5:6])
    assert torch.allclose(learned_log_variance(-torch.ones(1, 1, 1, 1), t, s).flatten(), s.log_beta_tilde[5:6])
    # KL of 1-d Gaussians against the textbook formula
    m1, v1, m2, v2 = 0.3, 0.5, -0.1, 2.0
    ref = math.log(math.sqrt(v2 / v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
    assert math.isclose(normal_kl(torch.tensor(m1), torch.tensor(v1).log(), torch.tensor(m2), torch.tensor(v2).log()).item(), ref, rel_tol=1e-5)
    # the exact CDF (not the official code's tanh approximation, which is off by ~1e-4)
    assert math.isclose(std_normal_cdf(torch.tensor(1.)).item(), 0.8413447, rel_tol=1e-6)
    # the 256 bins are a probability distribution
    p = discretized_gaussian_log_likelihood(torch.linspace(-1, 1, 256), torch.tensor(-0.4), torch.tensor(-2.)).exp()
    assert abs(p.sum().item() - 1) < 1e-5
    # oracle ε with the true variance: the bound is the decoder term alone (exactly and stratified)
    x0 = (torch.randint(0, 256, (1, 1, 8, 8)) / 255 * 2 - 1).float()
    oracle = lambda x, t: (x - extract(s.sqrt_alpha_bar, t) * x0) / extract(s.sqrt_one_minus_alpha_bar, t)
    total = nll_bpd(oracle, x0, s, fixed='beta_tilde')
    t0 = torch.zeros(1, dtype=torch.long)
    x1 = q_sample(x0, t0, torch.randn_like(x0), s)
    assert torch.allclose(total, vb_terms(oracle(x1, t0), None, x0, x1, t0, s, clip=True, fixed='beta_tilde'), atol=1e-3)
    assert torch.allclose(nll_bpd(oracle, x0, s, fixed='beta_tilde', stride=6), total, atol=1e-3)
    # stratified estimate of a non-trivial bound: unbiased (mean of repeats ≈ the exact sum)
    wrong = lambda x, t: oracle(x, t) + 0.2
    g = torch.Generator().manual_seed(0)
    exact = nll_bpd(wrong, x0.expand(32, -1, -1, -1), s, generator=g).mean()
    est = torch.stack([nll_bpd(wrong, x0.expand(32, -1, -1, -1), s, generator=g, stride=4).mean() for _ in range(30)]).mean()
    assert abs(est - exact) < 0.03 * exact
    with pytest.raises(ValueError, match='stride'): nll_bpd(wrong, x0, s, stride=0)
    with pytest.raises(ValueError, match='fixed'): p_mean_logvar(x0, None, x0, t0, s, fixed='large')
    # hybrid loss: the vlb part reaches only the variance channel (stop-gradient on the mean)
    m = UNet(c_out=2, ch=8, ch_mult=(1,), n_res=1, attn_res=(), dropout=0.)
    torch.manual_seed(0); l_h = hybrid_loss(m, x0.expand(4, -1, -1, -1), s, lam=1.0)
    torch.manual_seed(0); l_s = ddpm_loss(m, x0.expand(4, -1, -1, -1), s)
    assert l_h.item() > l_s.item()
    l_h.backward()
    assert m.out[-1].weight.grad[1].abs().sum() > 0
    with pytest.raises(ValueError, match='c_out = 2'): hybrid_loss(UNet(ch=8, ch_mult=(1,), n_res=1, attn_res=()), x0, s)


def test_ddim_guides_nowhere_without_signal():
    "DDIM applies no classifier guidance where ᾱ_t ≤ GUIDE_MIN_ALPHA_BAR (t = T of the cosine schedule), and guides elsewhere."
    from dl2021.diffusion import GUIDE_MIN_ALPHA_BAR, make_schedule, CHAPTER_RECIPES
    s = make_schedule(CHAPTER_RECIPES['smoke'])
    assert s.alpha_bar[-1] <= GUIDE_MIN_ALPHA_BAR < s.alpha_bar[-2]           # only the last step of the cosine schedule
    x_T, f = torch.randn(2, 1, 4, 4), lambda x, t: 0.1 * x
    g = lambda x, t: torch.full_like(x, 0.3)
    assert torch.equal(ddim_sample(f, None, s, steps=1, x_T=x_T, cond_fn=g), ddim_sample(f, None, s, steps=1, x_T=x_T))
    assert not torch.allclose(ddim_sample(f, None, s, steps=3, x_T=x_T, cond_fn=g), ddim_sample(f, None, s, steps=3, x_T=x_T))
