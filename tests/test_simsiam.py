"""SimSiam: the stop-gradient blocks the gradient (and removing it changes the encoder's gradient), the loss, the
predictor switch and its learning rate."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from dl2021.simsiam import D, simsiam_loss, SimSiam, simsiam_step, simsiam_opt, simsiam_config
from dl2021.ssl import resnet_backbone


def leaves(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 7, generator=g, requires_grad=True) for _ in range(4)]


def test_stop_gradient_blocks_the_gradient():
    p1, p2, z1, z2 = leaves()
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None                      # fails if `.detach()` is removed
    assert p1.grad is not None and p1.grad.abs().sum() > 0
    p1, p2, z1, z2 = leaves()
    simsiam_loss(p1, p2, z1, z2, stop_grad=False).backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0          # the ablation does send gradient into z


def encoder_grads(stop_grad):
    torch.manual_seed(0)
    m = SimSiam(resnet_backbone((4, 8, 8, 8)), 16, 8, 4)
    x = torch.rand(8, 1, 28, 28)
    simsiam_step(m, ((x, x.flip(-1)), None), stop_grad=stop_grad)['loss'].backward()
    return m, [p.grad.clone() for p in m.backbone.parameters()]


def test_stop_gradient_on_the_whole_model():
    "The encoder's gradient with the stop-gradient equals the gradient through the predictor branch alone."
    m, g_sg = encoder_grads(True)
    _, g_full = encoder_grads(False)
    assert any(not torch.allclose(a, b) for a, b in zip(g_sg, g_full))
    # reference, written by hand: the same weights and batch, the targets detached explicitly
    torch.manual_seed(0)
    m2 = SimSiam(resnet_backbone((4, 8, 8, 8)), 16, 8, 4)
    x = torch.rand(8, 1, 28, 28)
    v1, v2 = x, x.flip(-1)
    z1, z2 = m2.projector(m2.backbone(v1)), m2.projector(m2.backbone(v2))
    t1, t2 = z1.detach(), z2.detach()                                # the targets: constants for the optimiser
    p1, p2 = m2.predictor(z1), m2.predictor(z2)
    loss = -(F.cosine_similarity(p1, t2).mean() + F.cosine_similarity(p2, t1).mean()) / 2
    loss.backward()
    for a, b in zip(g_sg, [p.grad for p in m2.backbone.parameters()]): assert torch.allclose(a, b, atol=1e-6)


def test_loss_values():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    assert simsiam_loss(2 * z2, 3 * z1, z1, z2).item() == pytest.approx(-1., abs=1e-6)
    assert D(z1, -z1).item() == pytest.approx(1., abs=1e-6)
    c = torch.ones(4, 6)
    assert simsiam_loss(c, c, c, c).item() == pytest.approx(-1., abs=1e-6)     # the collapsed solution is a minimum


def test_predictor_switch_and_lr():
    m = SimSiam(resnet_backbone((4, 8, 8, 8)), 16, 8, 4, predictor=False)
    assert isinstance(m.predictor, nn.Identity)
    opt = simsiam_opt(m, 1e-3, 1e-4)
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(m.parameters()))
    m = SimSiam(resnet_backbone((4, 8, 8, 8)), 16, 8, 4)
    opt = simsiam_opt(m, 2e-3, 1e-4, pred_lr=0.)
    pred = {id(p) for p in m.predictor.parameters()}
    for g in opt.param_groups:
        assert g['lr'] == (0. if any(id(p) in pred for p in g['params']) else 2e-3)


def test_config():
    cfg = simsiam_config('smoke', stop_grad=False)
    assert not cfg.stop_grad and cfg.predictor and cfg.pred_lr == 1.
