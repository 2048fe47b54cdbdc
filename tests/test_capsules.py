import math
import pytest, torch
from dl2021.core import n_params
from dl2021.capsules import (squash, dynamic_routing, margin_loss, PrimaryCaps, ClassCaps, CapsNet, CapsCNN,
                             capsnet_paper, capsule_step, perturb_capsule)


def test_squash_hand_made():
    v = squash(torch.tensor([3., 4.]))                       # ‖s‖ = 5 -> ‖v‖ = 25/26, same direction
    torch.testing.assert_close(v, torch.tensor([0.6, 0.8]) * 25 / 26)
    torch.testing.assert_close(squash(torch.tensor([[0., 2., 0.]]), dim=-1), torch.tensor([[0., 0.8, 0.]]))
    assert torch.equal(squash(torch.zeros(2, 4)), torch.zeros(2, 4))             # no NaN at zero
    s = torch.randn(5, 7, 16) * 10
    assert (squash(s).norm(dim=-1) < 1).all()
    # squash along another dimension
    torch.testing.assert_close(squash(s.transpose(1, 2), dim=1), squash(s).transpose(1, 2))


def test_squash_gradient_finite_at_zero():
    s = torch.zeros(3, requires_grad=True)
    squash(s).sum().backward()
    assert torch.isfinite(s.grad).all()


def test_routing_one_iteration_is_uniform_average():
    u_hat = torch.randn(2, 5, 3, 4)
    v, c = dynamic_routing(u_hat, iters=1)
    torch.testing.assert_close(c, torch.full((2, 1, 5, 3), 1 / 3))
    torch.testing.assert_close(v, squash(u_hat.mean(1) * 5 / 3))           # s_j = Σ_i (1/J) û_j|i


def test_routing_softmax_over_parents_not_children():
    u_hat = torch.randn(2, 6, 4, 3)
    _, c = dynamic_routing(u_hat, iters=3)
    torch.testing.assert_close(c.sum(-1), torch.ones(2, 3, 6))           # each child distributes a unit vote
    assert not torch.allclose(c[:, -1].sum(1), torch.ones(2, 4))          # (over the children it does not sum to 1)


def test_routing_agreement_by_hand():
    # two children both predict (1, 0) for parent 0, and opposite vectors for parent 1:
    u_hat = torch.zeros(1, 2, 2, 2)
    u_hat[0, :, 0] = torch.tensor([1., 0.])
    u_hat[0, 0, 1] = torch.tensor([0., 1.]); u_hat[0, 1, 1] = torch.tensor([0., -1.])
    v, c = dynamic_routing(u_hat, iters=2)
    # iteration 1: c = 1/2 -> s_0 = (1, 0), v_0 = squash = (0.5, 0); s_1 = 0, v_1 = 0
    # b_i0 = û_0|i · v_0 = 0.5, b_i1 = 0 -> c_i0 = sigmoid(0.5)
    torch.testing.assert_close(c[0, 1, :, 0], torch.full((2,), 1 / (1 + math.exp(-0.5))))
    s0 = 2 * c[0, 1, 0, 0]                                                     # Σ_i c_i0 · 1
    torch.testing.assert_close(v[0, 0], torch.tensor([s0 ** 2 / (1 + s0 ** 2), 0.]))
    torch.testing.assert_close(v[0, 1], torch.zeros(2))


def test_routing_refuses_zero_iterations():
    with pytest.raises(ValueError, match='at least 1'): dynamic_routing(torch.randn(1, 2, 2, 2), iters=0)


def test_margin_loss_by_hand():
    L = margin_loss(torch.tensor([[0.5, 0.6, 0.05], [0.95, 0.0, 0.2]]), torch.tensor([0, 0]))
    # example 1: 0.4² + 0.5·0.5²; example 2: 0.5·0.1²
    torch.testing.assert_close(L, torch.tensor((0.16 + 0.125 + 0.005) / 2))


def test_primary_caps_grouping():
    # the 8 components of one capsule are 8 consecutive channels of one capsule type
    pc = PrimaryCaps(1, n_types=2, dim=3, kernel_size=1, stride=1)
    with torch.no_grad():
        pc.conv.weight.zero_(); pc.conv.bias.copy_(torch.arange(6.))             # channel k outputs the constant k
    u = pc(torch.zeros(1, 1, 2, 2))                                             # (1, 2·2·2, 3)
    assert u.shape == (1, 8, 3)
    torch.testing.assert_close(u[0, 0], squash(torch.tensor([0., 1., 2.])))   # type 0: channels 0, 1, 2
    torch.testing.assert_close(u[0, 4], squash(torch.tensor([3., 4., 5.])))   # type 1: channels 3, 4, 5


def test_paper_parameter_count():
    m = capsnet_paper()
    # Sabour et al.: 8.2M parameters, 6.8M without the reconstruction subnetwork
    assert n_params(m) == 8_215_568
    assert n_params(m) - n_params(m.decoder) == 6_804_224
    assert m.caps.W.shape == (1152, 160, 8)


def test_cnn_same_size_as_capsnet_encoder():
    caps, cnn = CapsNet(conv_ch=8, n_types=3), CapsCNN(conv_ch=8, n_types=3)
    assert n_params(cnn.features) == n_params(caps) - n_params(caps.decoder)


def test_decoder_masks_all_but_one_capsule():
    m = CapsNet(conv_ch=4, n_types=2)
    v = torch.randn(3, 10, 16)
    cls = torch.tensor([1, 4, 9])
    v2 = v.clone(); v2[torch.arange(3), (cls + 1) % 10] += 5                  # change another capsule
    torch.testing.assert_close(m.decode(v, cls), m.decode(v2, cls))


def test_step_and_backward():
    torch.manual_seed(0)
    m = CapsNet(conv_ch=4, n_types=2)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    out = capsule_step(m, (x, y))
    assert out['n'] == 4 and 0 <= int(out['correct']) <= 4
    out['loss'].backward()
    assert m.caps.W.grad is not None and m.conv1.weight.grad.abs().sum() > 0
    assert capsule_step(m, (x, y), recon_weight=0.)['loss'] < out['loss']


def test_perturb_zero_is_reconstruction():
    m = CapsNet(conv_ch=4, n_types=2).eval()
    x = torch.rand(1, 28, 28)
    grid = perturb_capsule(m, x, [0, 3], [0., 0.25])
    assert grid.shape == (2, 2, 1, 28, 28)
    with torch.no_grad(): rec = m(x[None]).recon[0]
    torch.testing.assert_close(grid[0, 0], rec); torch.testing.assert_close(grid[1, 0], rec)
    assert not torch.allclose(grid[0, 1], rec)
