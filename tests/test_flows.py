import math
import pytest, torch
from torch import nn
from dl2021.flows import (Flow, jacobian_logdet, checkerboard, ZeroConv2d, AffineCoupling, ActNorm, InvConv1x1,
                          squeeze2d, unsqueeze2d, Squeeze, SplitPrior, FlowStep, Glow, dequantize, bits_per_dim,
                          flow_step, interpolate)

torch.set_default_dtype(torch.float32)


def randomise(m, std=0.2):
    "Random weights in the zero-initialised convolutions, so that scales and shifts are not the identity."
    for mod in m.modules():
        if isinstance(mod, ZeroConv2d): nn.init.normal_(mod.weight, std=std); nn.init.normal_(mod.bias, std=std)
    return m


def check(layer, x):
    y, ld = layer(x)
    torch.testing.assert_close(layer.inverse(y), x, rtol=0, atol=1e-10)
    torch.testing.assert_close(ld[0], jacobian_logdet(lambda v: layer(v)[0], x[:1]), rtol=0, atol=1e-8)


@pytest.mark.parametrize('mask,c', [('checkerboard', 1), ('checkerboard', 3), ('channel', 2), ('channel', 5)])
@pytest.mark.parametrize('parity', [0, 1])
def test_coupling_inverse_and_logdet(mask, c, parity):
    torch.manual_seed(parity)
    check(randomise(AffineCoupling(c, 6, mask, parity)).double(), torch.randn(3, c, 4, 6, dtype=torch.float64))


def test_coupling_leaves_conditioning_half_unchanged():
    layer = randomise(AffineCoupling(1, 6, 'checkerboard', 0))
    x = torch.randn(2, 1, 4, 4)
    y, _ = layer(x)
    b = checkerboard(4, 4, 0)
    torch.testing.assert_close(y * b, x * b)
    assert not torch.allclose(y * (1 - b), x * (1 - b))
    layer = randomise(AffineCoupling(4, 6, 'channel', 1))
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(layer(x)[0][:, 2:], x[:, 2:])                 # parity 1: the last half conditions


def test_zero_init_coupling_is_identity_up_to_scale():
    layer = AffineCoupling(4, 6, 'channel')
    x = torch.randn(2, 4, 3, 3)
    y, ld = layer(x)
    s = torch.sigmoid(torch.tensor(2.))                                         # Glow's sigmoid(h + 2) at h = 0
    torch.testing.assert_close(y[:, 2:], x[:, 2:] * s)
    torch.testing.assert_close(ld, torch.full((2,), 2 * 9 * math.log(s)))


def test_checkerboard_mask():
    b = checkerboard(3, 3)[0, 0]
    assert b.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert torch.equal(checkerboard(3, 3, 1)[0, 0], 1 - b)


def test_actnorm_data_init_and_logdet():
    an = ActNorm(2).double()
    x = torch.randn(50, 2, 3, 3, dtype=torch.float64) * torch.tensor([3., .2]).view(1, 2, 1, 1).double() + 7
    y, ld = an(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(ld, torch.full((50,), 9 * an.log_scale.sum().item(), dtype=torch.float64))
    check(an, x[:3])
    # initialised once only: a second batch with other statistics does not re-initialise
    an(x * 10)
    torch.testing.assert_close(an(x)[0].mean((0, 2, 3)), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-9)


def test_actnorm_no_init_in_eval():
    an = ActNorm(2).eval()
    an(torch.randn(4, 2, 2, 2) + 5)
    assert not an.initialized


def test_invconv_lu_weight_and_logdet():
    torch.manual_seed(0)
    ic = InvConv1x1(5).double()
    torch.testing.assert_close(torch.linalg.slogdet(ic.weight())[1], torch.tensor(0., dtype=torch.float64), rtol=0, atol=1e-6)  # a rotation
    with torch.no_grad(): ic.log_s.add_(torch.randn(5).double() * .3); ic.U.add_(.3); ic.L.add_(.2)
    W = ic.weight()
    torch.testing.assert_close(torch.linalg.slogdet(W)[1], ic.log_s.sum())      # LU: log|det W| = Σ log|s|
    # the masks keep L unit-lower and U strictly upper even after an update touched every entry
    L = ic.L * ic.l_mask + ic.eye
    assert torch.allclose(torch.triu(L, 1), torch.zeros(5, 5, dtype=torch.float64))
    check(ic, torch.randn(2, 5, 3, 2, dtype=torch.float64))


def test_squeeze_is_a_permutation():
    x = torch.arange(2 * 3 * 4 * 6.).view(2, 3, 4, 6)
    y = squeeze2d(x)
    assert y.shape == (2, 12, 2, 3)
    assert torch.equal(unsqueeze2d(y), x)
    assert sorted(y.flatten().tolist()) == sorted(x.flatten().tolist())
    assert y[0, :4, 0, 0].tolist() == [0, 1, 6, 7]                             # one 2×2 block of channel 0
    with pytest.raises(ValueError, match='even'): squeeze2d(torch.zeros(1, 1, 3, 4))
    assert torch.equal(Squeeze()(x)[1], torch.zeros(2))


def test_split_prior_standardises():
    sp = randomise(SplitPrior(4)).double()
    z = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    z1, eps, ld = sp(z)
    mu, log_sig = sp.prior(z1).chunk(2, 1)
    torch.testing.assert_close(eps, (z[:, 2:] - mu) / log_sig.exp())
    torch.testing.assert_close(sp.inverse(z1, eps), z)
    torch.testing.assert_close(ld, -log_sig.flatten(1).sum(-1))


def tiny_glow(seed=0):
    torch.manual_seed(seed)
    g = randomise(Glow(1, 4, hidden=6, n_checker=2, steps=(2, 2))).double()
    g.encode(torch.randn(16, 1, 4, 4, dtype=torch.float64))                    # actnorm data-init
    return g


def test_glow_exact_inverse_and_whole_logdet():
    g = tiny_glow()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    zs, logdet = g.encode(x)
    assert sum(z[0].numel() for z in zs) == 16                                 # a bijection of R^16
    torch.testing.assert_close(g.decode(zs), x, rtol=0, atol=1e-10)
    whole = lambda v: torch.cat([z.flatten(1) for z in g.encode(v)[0]], 1)
    torch.testing.assert_close(logdet[0], jacobian_logdet(whole, x[:1]), rtol=0, atol=1e-8)


def test_glow_log_prob_of_a_linear_flow_is_the_gaussian_density():
    # freshly built and in eval mode (no actnorm init), every layer is linear: z = A x, so x ~ N(0, (AᵀA)⁻¹).
    # log_prob must be that closed-form density (catches a wrong sign of the log-det or a missing −½ log 2π).
    torch.manual_seed(0)
    g = Glow(1, 4, hidden=6, n_checker=2, steps=(2, 2)).double().eval()
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    A = torch.autograd.functional.jacobian(lambda v: torch.cat([z.flatten(1) for z in g.encode(v.view(1, 1, 4, 4))[0]], 1)[0],
                                           torch.zeros(16, dtype=torch.float64))
    ref = torch.distributions.MultivariateNormal(torch.zeros(16, dtype=torch.float64), precision_matrix=A.T @ A)
    torch.testing.assert_close(g.log_prob(x), ref.log_prob(x.flatten(1)))


def test_glow_shapes_fmnist():
    g = Glow(1, 28, hidden=8, n_checker=1, steps=(1, 1))
    assert [tuple(s) for s in g.latent_shapes] == [(2, 14, 14), (8, 7, 7)]
    for f in g.modules():
        if isinstance(f, ActNorm): assert not f.initialized                    # the shape probe did not initialise
    with pytest.raises(ValueError, match='divisible'): Glow(1, 30, steps=(1, 1, 1))


def test_sample_temperature_zero_is_decoded_zero():
    g = tiny_glow(); g.eval()
    s = g.sample(2, temperature=0.)
    torch.testing.assert_close(s, g.decode([torch.zeros(2, *sh, dtype=torch.float64) for sh in g.latent_shapes]))


def test_bits_per_dim_closed_forms():
    assert torch.equal(bits_per_dim(torch.zeros(2), 10), torch.full((2,), 8.))  # uniform on the cube: 8 bits
    assert bits_per_dim(torch.tensor(0.), 10, n_bits=5) == 5.
    logp = torch.tensor(-0.5 * math.log(2 * math.pi) * 784)
    torch.testing.assert_close(bits_per_dim(logp, 784), torch.tensor(8 + 0.5 * math.log2(2 * math.pi)))


def test_dequantize_stays_in_cube():
    x = torch.randint(0, 256, (1000,)).float()
    y = dequantize(x)
    assert ((y + 0.5) * 256 >= x).all() and ((y + 0.5) * 256 < x + 1).all()


def test_flow_step_trains():
    torch.manual_seed(0)
    g = Glow(1, 4, hidden=6, n_checker=1, steps=(1, 1))
    x = torch.rand(8, 1, 4, 4)
    out = flow_step(g, (x, torch.zeros(8)))
    assert out['n'] == 8 and torch.isfinite(out['loss'])
    out['loss'].backward()
    assert all(p.grad is not None for p in g.parameters() if p.requires_grad)


def test_interpolate_endpoints():
    g = tiny_glow(); g.eval()
    a, b = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    path = interpolate(g, a, b, 5)
    assert path.shape == (5, 1, 4, 4)
    torch.testing.assert_close(path[0], a, rtol=0, atol=1e-9); torch.testing.assert_close(path[-1], b, rtol=0, atol=1e-9)
