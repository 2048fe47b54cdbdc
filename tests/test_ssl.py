"""The shared self-supervised layer: k-NN against a brute-force reference, the collapse monitor on collapsed and
whitened sets, the augmentations' identities, the ViT's attention read-out, and the monitor as a `fit` hook."""
import math
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from dl2021.core import set_seed
from dl2021.data import DeviceBatches, Split
from dl2021.train import fit
from dl2021.ssl import (knn_predict, collapse_stats, effective_rank, CollapseMonitor, random_resized_crop,
                        brightness_contrast, gaussian_blur, solarize, SSLAugment, Views, ViT, resnet_backbone, mlp,
                        linear_probe, ssl_budget)


def knn_brute(q, bank, bank_y, k, T, n_classes=10):
    "Weighted k-NN written from the formula: each query on its own, Python loops, float64."
    out = []
    for qi in q.double():
        sims = [float(qi @ b / (qi.norm() * b.norm())) for b in bank.double()]
        order = sorted(range(len(bank)), key=lambda i: -sims[i])[:k]
        votes = [sum(math.exp(sims[i] / T) for i in order if int(bank_y[i]) == c) for c in range(n_classes)]
        out.append(max(range(n_classes), key=lambda c: votes[c]))
    return out


@pytest.mark.parametrize('k,T', [(1, 0.07), (20, 0.07), (50, 0.5), (200, 0.07)])
def test_knn_matches_brute_force(k, T):
    g = torch.Generator().manual_seed(k)
    bank, q = torch.randn(250, 12, generator=g), torch.randn(30, 12, generator=g)
    bank_y = torch.randint(0, 10, (250,), generator=g)
    pred = knn_predict(q, bank, bank_y, k=k, T=T, chunk=7)            # several chunks
    assert pred.tolist() == knn_brute(q, bank, bank_y, min(k, 250), T)


def test_knn_is_scale_invariant_and_weighted():
    "Cosine similarity: rescaling features changes nothing; the temperature weights make one close neighbour outvote two far ones."
    bank = torch.tensor([[1., 0.], [0.6, 0.8], [0.6, 0.8]])
    y = torch.tensor([0, 1, 1])
    q = torch.tensor([[1., 0.05]])
    assert knn_predict(q, bank, y, k=3, T=0.07, n_classes=2).item() == 0     # exp(1/.07) ≫ 2 exp(0.64/.07)
    assert knn_predict(q, bank, y, k=3, T=100., n_classes=2).item() == 1     # T → ∞: plain majority vote
    assert knn_predict(7 * q, 3 * bank, y, k=3, T=0.07, n_classes=2).item() == 0


def test_collapse_stats_collapsed_whitened_and_line():
    g = torch.Generator().manual_seed(0)
    white = torch.randn(8192, 32, generator=g)
    s = collapse_stats(white)
    assert abs(s['std'] - 1 / math.sqrt(32)) < 0.003 and s['std_ref'] == pytest.approx(32 ** -0.5)
    assert s['erank'] > 31
    collapsed = torch.randn(32, generator=g).expand(1000, -1) + 1e-5 * torch.randn(1000, 32, generator=g)
    s = collapse_stats(collapsed)
    assert s['std'] < 1e-4
    assert effective_rank(torch.randn(1, 32, generator=g).expand(100, -1).clone()) == 0.     # no spread at all
    line = torch.randn(300, 1, generator=g) * torch.randn(1, 16, generator=g)
    assert effective_rank(line) == pytest.approx(1., abs=1e-6)
    two = torch.cat([torch.randn(400, 2, generator=g), torch.zeros(400, 14)], 1)   # isotropic in 2 of 16 dims
    assert 1.8 < effective_rank(two) <= 2.


def test_effective_rank_is_exp_entropy_of_the_spectrum():
    "On a diagonal covariance the effective rank is exp(H(p)) of the normalised variances."
    g = torch.Generator().manual_seed(1)
    scales = torch.tensor([3., 2., 1., 0.5])
    z = torch.randn(200_000, 4, generator=g) * scales
    p = scales ** 2 / (scales ** 2).sum()
    assert effective_rank(z) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=0.01)


def test_augment_identities_and_ranges():
    set_seed(0)
    x = torch.rand(16, 1, 28, 28)
    assert torch.allclose(random_resized_crop(x, scale=(1, 1), ratio=(1, 1), flip=0), x, atol=1e-5)
    assert torch.allclose(random_resized_crop(x, scale=(1, 1), ratio=(1, 1), flip=1), x.flip(-1), atol=1e-5)
    assert random_resized_crop(x, size=12).shape == (16, 1, 12, 12)
    assert torch.allclose(brightness_contrast(x, p=0), x, atol=1e-6)
    assert torch.allclose(gaussian_blur(x, torch.full((16,), 1e-3)), x, atol=1e-6)
    assert torch.equal(solarize(x, p=0), x)
    v = SSLAugment(blur=1., solarize=0.5, noise=0.05)(x)
    assert v.shape == x.shape and v.min() >= 0 and v.max() <= 1
    views = Views(SSLAugment(), SSLAugment(solarize=1.))(x)
    assert len(views) == 2 and not torch.equal(views[0], views[1])
    with pytest.raises(ValueError, match='probability'): SSLAugment(blur=1.5)
    with pytest.raises(ValueError, match='scale'): SSLAugment(scale=(0, 1))


def test_vit_attention_readout():
    "The written-out attention equals the fused kernel, rows are distributions, and it depends on the input."
    torch.manual_seed(0)
    vit = ViT(dim=32, depth=2, heads=4).eval()
    x = torch.rand(3, 1, 28, 28)
    t = vit.tokens(x)
    blk = vit.blocks[-1]
    assert torch.allclose(blk(t), blk(t, return_attn=True)[0], atol=1e-5)
    A = vit.get_last_selfattention(x)
    assert A.shape == (3, 4, 50, 50)
    assert torch.allclose(A.sum(-1), torch.ones(3, 4, 50), atol=1e-5)
    assert not torch.allclose(A[0], A[1])
    assert vit(x).shape == (3, 32)
    assert torch.equal(vit.pos_encoding(7, 7), vit.pos_embed)                 # native grid: the learned embeddings
    assert vit(torch.rand(2, 1, 12, 12)).shape == (2, 32)                       # DINO's local crops: resized embeddings
    assert vit.get_last_selfattention(torch.rand(2, 1, 32, 32)).shape == (2, 4, 65, 65)
    with pytest.raises(ValueError, match='multiple'): vit(torch.rand(1, 1, 30, 30))
    with pytest.raises(ValueError, match='multiple'): ViT(dim=30, heads=4)


def test_heads_and_backbone_shapes():
    bb = resnet_backbone((8, 16, 32, 64))
    assert bb(torch.rand(2, 1, 28, 28)).shape == (2, bb.dim) and bb.dim == 64
    p = mlp(64, 32, 16, n_layers=3, last_bn=True)
    assert p(torch.randn(5, 64)).shape == (5, 16)
    assert isinstance(p[-1], nn.BatchNorm1d) and not p[-1].affine and p[-2].bias is None
    with pytest.raises(ValueError): mlp(4, 4, 4, n_layers=0)


def test_linear_probe_separable():
    "Linearly separable features give a (near) perfect probe; pure noise gives chance."
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (2000,), generator=g)
    f = F.one_hot(y, 10).float() * 3 + 0.3 * torch.randn(2000, 10, generator=g)
    assert linear_probe(f[:1500], y[:1500], f[1500:], y[1500:], epochs=5)['acc'] > 0.98
    noise = torch.randn(2000, 10, generator=g)
    assert linear_probe(noise[:1500], y[:1500], noise[1500:], y[1500:], epochs=5)['acc'] < 0.2


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
        self.projector = nn.Linear(8, 4)


def test_monitor_is_a_fit_hook():
    "It measures every `every` steps inside `fit`, in eval mode, and leaves the model in training mode."
    torch.manual_seed(0)
    m = _Net()
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 10, (64,))
    bank = Split(x[:32], y[:32])
    mon = CollapseMonitor(x[:16], output=lambda m, x: m.projector(m.backbone(x)), features=lambda m, x: m.backbone(x),
                          knn=(bank, bank), every=2)
    modes = []
    def step(model, batch):
        modes.append(model.training)
        return dict(loss=model.projector(model.backbone(batch[0])).pow(2).mean())
    fit(m, DeviceBatches(x, y, bs=8, shuffle=True), epochs=1, step=step, after_step=mon, log=False)
    assert mon.history['step'] == [2, 4, 6, 8]
    assert all(0 <= a <= 1 for a in mon.history['knn']) and all(modes) and m.training
    with pytest.raises(ValueError, match='features'): CollapseMonitor(x, output=lambda m, x: x, knn=(bank, bank))


def test_budget_presets():
    for name in ('smoke', 'cpu', 'full'):
        cfg = ssl_budget(name)
        assert cfg.preset == name and cfg.k == 200 and cfg.T == 0.07
    assert ssl_budget('smoke', lr=1.).lr == 1.
