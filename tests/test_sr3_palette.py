import pytest
import math
import torch
from dl2021.diffusion import Schedule, linear_betas, UNet
from dl2021.sr3 import (downsample, upsample, psnr, gaussian_window, ssim, cond_diffusion_loss, make_cond_step,
                        cond_eps_fn, cond_sample, regression_loss, make_regression_step, regress, consistency)
from dl2021.palette import (box_mask, uncrop_mask, fill_noise, dct_matrix, jpeg_table, jpeg_like, JPEG_LUMA, TASKS,
                            degrade, multi_task_degrade, pairwise_ssim, paste_known)


# ---- SR3 metrics and operators
def test_psnr_known_case():
    x, y = torch.zeros(2, 1, 8, 8), torch.full((2, 1, 8, 8), 0.1)
    assert torch.allclose(psnr(x, y, data_range=1.), torch.tensor([20., 20.]), atol=1e-4)
    assert torch.allclose(psnr(x, y * 10, data_range=2.), torch.full((2,), 10 * math.log10(4.)), atol=1e-4)


def test_ssim_identity_constants_and_order():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-5)
    a, b, C1 = 1.3, 0.6, (0.01 * 2) ** 2                    # intensities after the shift to [0, 2]
    got = ssim(torch.full((1, 1, 16, 16), a - 1), torch.full((1, 1, 16, 16), b - 1))
    assert abs(float(got) - (2 * a * b + C1) / (a * a + b * b + C1)) < 1e-4
    s = [float(ssim(x, x + sd * torch.randn_like(x)).mean()) for sd in (0.05, 0.2, 0.8)]
    assert s[0] > s[1] > s[2]
    assert (ssim(x, -x) < -0.5).all()                       # an inverted image is anti-similar
    assert torch.allclose(ssim(x, x + 0.3, data_range=2.), ssim((x + 1) / 2, (x + 1.3) / 2, data_range=1., lo=0.), atol=1e-5)


def test_gaussian_window():
    w = gaussian_window(11, 1.5)
    assert w.shape == (11, 11) and abs(float(w.sum()) - 1) < 1e-6
    assert w[5, 5] == w.max() and torch.allclose(w, w.T)


def test_down_up_consistency():
    torch.manual_seed(0)
    y = torch.rand(3, 1, 32, 32) * 2 - 1
    assert downsample(y).shape == (3, 1, 8, 8)
    assert torch.allclose(consistency(y, downsample(y)), torch.zeros(3))
    assert (consistency(torch.zeros_like(y), downsample(y)) > 0).all()
    assert upsample(downsample(y)).shape == y.shape and upsample(downsample(y)).abs().max() <= 1
    assert upsample(downsample(y), mode='nearest').shape == y.shape


def test_cond_loss_and_sampling():
    torch.manual_seed(0)
    sched = Schedule(linear_betas())
    net = UNet(c_in=2, ch=8, ch_mult=(1,), n_res=1, attn_res=(), dropout=0.)
    y0, cond = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32)
    t, eps = torch.tensor([0, 10, 500, 999]), torch.randn(4, 1, 32, 32)
    # the network's output starts at zero: the L2 loss is E ε², the L1 loss E |ε|
    assert torch.allclose(cond_diffusion_loss(net, y0, cond, sched, 2, t, eps), eps.pow(2).mean(), atol=1e-6)
    assert torch.allclose(cond_diffusion_loss(net, y0, cond, sched, 1, t, eps), eps.abs().mean(), atol=1e-6)
    out = make_cond_step(sched, lambda y: y * 0)(net, (y0,))
    assert out['loss'].requires_grad
    assert cond_eps_fn(net, cond)(y0, t).shape == (4, 1, 32, 32)
    for sampler in ('ddpm', 'ddim'):
        s = cond_sample(net, cond, sched, steps=3, sampler=sampler, generator=torch.Generator().manual_seed(0))
        assert s.shape == (4, 1, 32, 32) and torch.isfinite(s).all()


def test_condition_reaches_the_network():
    "Changing the condition changes ε̂: the concatenation is wired in."
    torch.manual_seed(0)
    net = UNet(c_in=2, ch=8, ch_mult=(1,), n_res=1, attn_res=(), dropout=0.)
    for p in net.parameters(): torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([5, 5])
    assert not torch.allclose(cond_eps_fn(net, torch.zeros_like(x))(x, t), cond_eps_fn(net, torch.ones_like(x))(x, t))


def test_regression():
    torch.manual_seed(0)
    net = UNet(c_in=1, ch=8, ch_mult=(1,), n_res=1, attn_res=(), dropout=0.)
    y0 = torch.rand(3, 1, 32, 32) * 2 - 1
    assert torch.allclose(regression_loss(net, y0, y0), y0.pow(2).mean(), atol=1e-6)   # zero output at init
    assert torch.allclose(regression_loss(net, y0, y0, p=1), y0.abs().mean(), atol=1e-6)
    assert make_regression_step(lambda y: y)(net, (y0,))['loss'].requires_grad
    assert regress(net, y0).shape == y0.shape


# ---- Palette degradations
def test_masks():
    torch.manual_seed(0)
    m = box_mask(1000)
    frac = m.mean((1, 2, 3))
    assert m.shape == (1000, 1, 32, 32) and set(m.unique().tolist()) <= {0., 1.}
    assert frac.min() > 0.05 and frac.max() < 0.5 and 0.15 < frac.mean() < 0.35
    u = uncrop_mask(400)
    assert torch.allclose(u.mean((1, 2, 3)), torch.full((400,), 0.5))
    # every one of the four sides occurs
    sides = {(int(x[0, 0, 0]), int(x[0, 0, -1]), int(x[0, -1, 0])) for x in u}
    assert len(sides) == 4
    y = torch.ones(2, 1, 32, 32)
    assert torch.equal(fill_noise(y, torch.zeros_like(y)), y)
    assert not torch.equal(fill_noise(y, torch.ones_like(y)), y)


def test_dct_and_jpeg():
    C = dct_matrix()
    assert torch.allclose(C @ C.T, torch.eye(8), atol=1e-6)
    assert torch.equal(jpeg_table(50), JPEG_LUMA)
    assert (jpeg_table(100) == 1).all() and (jpeg_table(10) >= jpeg_table(50)).all()
    assert jpeg_table(torch.tensor([10, 50])).shape == (2, 8, 8)
    assert jpeg_table(1).max() == 255                     # baseline JPEG caps quantisation steps at 255
    torch.manual_seed(0)
    y = torch.rand(4, 1, 32, 32) * 2 - 1
    errs = [float((jpeg_like(y, q) - y).abs().mean()) for q in (100, 50, 10)]
    assert errs[0] < 0.01 and errs[0] < errs[1] < errs[2]
    flat = torch.full((1, 1, 16, 16), 0.25)               # a flat image is (nearly) only DC: survives compression
    assert (jpeg_like(flat, 10) - flat).abs().max() < 0.1
    per = jpeg_like(y[:2], torch.tensor([10, 50]))
    assert torch.allclose(per, torch.cat([jpeg_like(y[:1], 10), jpeg_like(y[1:2], 50)]), atol=1e-6)


def test_degrade_tasks():
    torch.manual_seed(0)
    y = torch.rand(6, 1, 32, 32) * 2 - 1
    for task in TASKS:
        c, m = degrade(y, task, torch.Generator().manual_seed(0))
        assert c.shape == y.shape and m.shape == y.shape
        assert torch.allclose(c * (1 - m), y * (1 - m))    # known pixels are kept
    c = multi_task_degrade(y)
    assert c.shape == y.shape and not torch.equal(c, y)
    with pytest.raises(ValueError): degrade(y, 'colorize')


def test_pairwise_ssim():
    torch.manual_seed(0)
    s = torch.rand(3, 2, 1, 16, 16)
    assert torch.allclose(pairwise_ssim(s[[1, 1, 1]]), torch.ones(2), atol=1e-5)
    assert (pairwise_ssim(s) < 0.9).all()


def test_jpeg_exact_under_autocast():
    "fit trains under bf16 autocast: the degradation must not change with it."
    torch.manual_seed(0)
    y = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.autocast('cpu', dtype=torch.bfloat16):
        yb = jpeg_like(y, 10)
    assert yb.dtype == torch.float32 and torch.allclose(yb, jpeg_like(y, 10))


def test_cond_sample_oracle():
    "A denoiser that knows y_0 (= the condition) must be recovered exactly by both samplers at any step count."
    sched = Schedule(linear_betas())
    class Oracle(torch.nn.Module):
        def forward(self, x, t):
            ab = sched.alpha_bar[t].view(-1, 1, 1, 1)
            return (x[:, :1] - ab.sqrt() * x[:, 1:]) / (1 - ab).sqrt()
    c = torch.rand(3, 1, 8, 8) * 1.6 - 0.8
    for sampler in ('ddpm', 'ddim'):
        for steps in (5, 50):
            out = cond_sample(Oracle(), c, sched, steps=steps, sampler=sampler, generator=torch.Generator().manual_seed(0))
            assert (out - c).abs().max() < 1e-3


def test_masked_metrics():
    "PSNR and SSIM with a mask look only at the region to restore (Palette: the known pixels are given)."
    torch.manual_seed(0)
    y = torch.rand(2, 1, 32, 32) * 2 - 1
    m = torch.zeros(2, 1, 32, 32); m[..., 16:, :] = 1                      # bottom half to restore
    out = y.clone(); out[..., 16:, :] += 0.2                               # error only inside the mask
    mse_in = 0.2 ** 2
    assert torch.allclose(psnr(out, y, mask=m), torch.full((2,), 10 * math.log10(4 / mse_in)), atol=1e-3)
    assert (psnr(out, y, mask=m) < psnr(out, y)).all()                     # the whole image would hide half the error
    copy = paste_known(torch.zeros_like(y), y, m)                         # copying the input: error only where it matters
    assert torch.isinf(psnr(copy, y, mask=1 - m)).all()
    far = torch.zeros_like(m); far[..., :11, :] = 1                       # windows centred here (radius 5) miss the error
    assert torch.allclose(ssim(out, y, mask=far), torch.ones(2), atol=1e-5)
    assert (ssim(out, y, mask=m) < 0.999).all()
    with pytest.raises(ValueError, match='border'): ssim(y, y, mask=torch.zeros_like(y))
    s = torch.stack([y, out, out])
    assert torch.allclose(pairwise_ssim(s, far), torch.ones(2), atol=1e-5)    # the samples differ only in the mask
    with pytest.raises(ValueError, match='at least two'): pairwise_ssim(s[:1])


def test_sr3_constructors_validate():
    sched = Schedule(linear_betas())
    net = UNet(c_in=2, ch=8, ch_mult=(1,), n_res=1, attn_res=(), dropout=0.)
    y0 = torch.randn(2, 1, 32, 32)
    with pytest.raises(ValueError, match='p must be 1'): make_cond_step(sched, lambda y: y, p=3)
    with pytest.raises(ValueError, match='p must be 1'): make_regression_step(lambda y: y, p=0)
    with pytest.raises(ValueError, match='upsample'): cond_diffusion_loss(net, y0, torch.randn(2, 1, 8, 8), sched)
    with pytest.raises(ValueError, match='sampler'): cond_sample(net, y0, sched, steps=2, sampler='euler')
