"""The survey baselines: NT-Xent against a brute-force InfoNCE, its collapsed value, rotations, the steps."""
import math
import pytest
import torch
import torch.nn.functional as F
from dl2021.simclr import nt_xent, rotate, rotation_step, RotationNet, SimCLR, simclr_step, Supervised, \
    supervised_views_step, baseline_config
from dl2021.ssl import resnet_backbone


def info_nce_brute(z1, z2, tau):
    "SimCLR eq. 1 written out: for every anchor, -log of its partner's share of exp(sim/τ) over all other 2N-1 vectors."
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2]).double()]
    n2, N = len(z), len(z1)
    total = 0.
    for i in range(n2):
        j = (i + N) % n2
        num = math.exp(float(z[i] @ z[j]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


@pytest.mark.parametrize('tau', [0.1, 0.5, 1.0])
def test_nt_xent_matches_brute_force(tau):
    g = torch.Generator().manual_seed(int(tau * 10))
    z1, z2 = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(info_nce_brute(z1, z2, tau), rel=1e-5)


def test_nt_xent_limits_and_symmetry():
    N = 8
    assert nt_xent(torch.ones(N, 3), torch.ones(N, 3), 0.5).item() == pytest.approx(math.log(2 * N - 1), rel=1e-6)
    e = torch.eye(N)
    assert nt_xent(e, e, 0.05).item() < 1e-3                      # aligned positives, orthogonal negatives
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(N, 4, generator=g), torch.randn(N, 4, generator=g)
    assert nt_xent(z1, z2).item() == pytest.approx(nt_xent(z2, z1).item(), rel=1e-6)
    assert nt_xent(3 * z1, 0.5 * z2).item() == pytest.approx(nt_xent(z1, z2).item(), rel=1e-5)   # cosine: scale-free


def test_nt_xent_excludes_self_similarity():
    "The common bug: leaving i's similarity with itself in the denominator (it would add exp(1/τ) to every term)."
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    with_self = F.cross_entropy(z @ z.T / 0.2, torch.tensor([4, 5, 6, 7, 0, 1, 2, 3]))
    assert abs(nt_xent(z1, z2, 0.2).item() - with_self.item()) > 0.01


def test_rotate():
    x = torch.arange(2 * 9, dtype=torch.float).reshape(2, 1, 3, 3)
    k = torch.tensor([1, 3])
    r = rotate(x, k)
    assert torch.equal(r[0, 0], torch.rot90(x[0, 0], 1)) and torch.equal(r[1, 0], torch.rot90(x[1, 0], 3))
    assert torch.equal(rotate(r, (4 - k) % 4), x)


def test_steps_run_and_count():
    torch.manual_seed(0)
    bb = resnet_backbone((4, 8, 8, 8))
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    batch = ((x, x.flip(-1)), y)
    out = rotation_step(RotationNet(bb), batch)
    assert out['n'] == 12 and 0 <= out['correct'] <= 12 and out['loss'].ndim == 0
    out = supervised_views_step(Supervised(bb), batch)
    assert out['n'] == 12
    m = SimCLR(bb, 16, 8)
    out = simclr_step(m, batch, tau=0.2)
    assert out['n'] == 6
    out['loss'].backward()
    assert all(p.grad is not None for p in m.parameters())


def test_config():
    assert baseline_config('simclr', 'smoke').tau == 0.2
    with pytest.raises(ValueError, match='method'): baseline_config('mocov9', 'smoke')
