"Riemannian embeddings: Poincaré distance, Riemannian gradient, projection, geodesics by path energy, metrics."
import math
import pytest
import torch
import torch.nn.functional as F
from dl2021.riemannian import (MetricNet, RiemannianSGD, TreeEmbedding, distortion, geodesic, graph_distances,
                               hierarchy, nk_step, path_length, poincare_distance, poincare_metric, project,
                               reconstruction, riemannian_grad)


def test_poincare_distance_closed_form():
    r = torch.tensor([0., 0.3, 0.7, 0.95])
    x = torch.stack([r, torch.zeros(4)], -1)
    torch.testing.assert_close(poincare_distance(torch.zeros(4, 2), x), 2 * torch.atanh(r), atol=1e-5, rtol=1e-5)
    u, v = torch.tensor([[0.1, 0.2]]), torch.tensor([[-0.4, 0.5]])
    z = 1 + 2 * ((u - v) ** 2).sum() / ((1 - (u ** 2).sum()) * (1 - (v ** 2).sum()))
    assert math.isclose(poincare_distance(u, v).item(), math.acosh(z.item()), rel_tol=1e-5)
    torch.testing.assert_close(poincare_distance(u, v), poincare_distance(v, u))


def test_poincare_triangle_inequality_and_growth():
    g = torch.Generator().manual_seed(0)
    pts = F.normalize(torch.randn(30, 3, 2, generator=g), dim=-1) * torch.rand(30, 3, 1, generator=g) * 0.95
    a, b, c = pts.unbind(1)
    assert (poincare_distance(a, c) <= poincare_distance(a, b) + poincare_distance(b, c) + 1e-5).all()
    # near the boundary the same Euclidean gap is a much larger hyperbolic distance
    assert poincare_distance(torch.tensor([[0.9, 0.]]), torch.tensor([[0.95, 0.]])) > 5 * poincare_distance(
        torch.tensor([[0., 0.]]), torch.tensor([[0.05, 0.]]))


def test_riemannian_gradient_rescaling():
    x = torch.tensor([[0., 0.], [0.5, 0.5], [0.9, 0.]])
    g = torch.tensor([[1., 2.], [1., 2.], [1., 2.]])
    factor = ((1 - (x ** 2).sum(1)) ** 2 / 4)[:, None]
    torch.testing.assert_close(riemannian_grad(x, g), factor * g)
    # it is the inverse of the metric: g_x⁻¹ ∇ with g_x = (2/(1-|x|²))² I
    inv = torch.linalg.inv(poincare_metric(x))
    torch.testing.assert_close(riemannian_grad(x, g), (inv @ g[..., None])[..., 0])


def test_projection():
    x = torch.tensor([[0.3, 0.4], [3., 4.], [0., 1.]])
    out = project(x, eps=1e-5)
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1].norm(), torch.tensor(1 - 1e-5))
    torch.testing.assert_close(out[1] / out[1].norm(), x[1] / x[1].norm())
    assert out[2].norm() < 1


def test_rsgd_step():
    p = torch.nn.Parameter(torch.tensor([[0.5, 0.], [0.2, 0.1]]))
    p.grad = torch.tensor([[-100., 0.], [1., 1.]])
    before = p.detach().clone()
    RiemannianSGD([p], lr=0.1).step()
    assert p.norm(dim=1).max() < 1                                    # the big step was projected back
    expected = before[1] - 0.1 * (1 - (before[1] ** 2).sum()) ** 2 / 4 * torch.tensor([1., 1.])
    torch.testing.assert_close(p[1].detach(), expected)
    q = torch.nn.Parameter(torch.tensor([[0.5, 0.]])); q.grad = torch.tensor([[1., 0.]])
    RiemannianSGD([q], lr=0.1, manifold='euclidean').step()
    torch.testing.assert_close(q.detach(), torch.tensor([[0.4, 0.]]))
    with pytest.raises(ValueError, match='manifold'): RiemannianSGD([q], manifold='sphere')


def test_geodesic_solver_reproduces_closed_forms():
    g = torch.Generator().manual_seed(1)
    p = F.normalize(torch.randn(16, 2, generator=g), dim=-1) * 0.8 * torch.rand(16, 1, generator=g)
    q = F.normalize(torch.randn(16, 2, generator=g), dim=-1) * 0.8 * torch.rand(16, 1, generator=g)
    eye = lambda x: torch.eye(2).expand(*x.shape[:-1], 2, 2)
    torch.testing.assert_close(path_length(eye, geodesic(eye, p, q, 8, 5)), (p - q).norm(dim=-1), atol=1e-5, rtol=1e-5)
    est = path_length(poincare_metric, geodesic(poincare_metric, p, q, 16, 200))
    assert ((est - poincare_distance(p, q)) / poincare_distance(p, q)).abs().max() < 0.01


def test_geodesic_gradients_reach_the_metric_and_the_endpoints():
    metric = MetricNet(8)
    x = torch.nn.Parameter(torch.randn(4, 2))
    d = path_length(metric, geodesic(metric, x[:2], x[2:], 4, 3)).sum()
    d.backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is not None for p in metric.parameters())


def test_metric_net_is_spd_and_starts_euclidean():
    m = MetricNet(16)
    x = torch.randn(10, 2)
    torch.testing.assert_close(m(x), torch.eye(2).expand(10, 2, 2))
    torch.nn.init.normal_(m.net[-1].weight)
    G = m(x)
    torch.testing.assert_close(G, G.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(G) > 0).all()


def test_hierarchy_and_graph_distances():
    H = hierarchy([('b', 'a'), ('c', 'a'), ('d', 'b'), ('d', 'a'), ('e', 'd'), ('e', 'b'), ('e', 'a')])
    assert H['edges'] == [(1, 0), (2, 0), (3, 1), (4, 3)]
    D = graph_distances(H['edges'], 5)
    assert D[4].tolist() == [3, 2, 4, 1, 0] and (D == D.T).all()
    assert H['adj'][4].tolist() == [True, True, False, True, False]


def test_reconstruction_and_distortion():
    D = torch.tensor([[0., 1., 3., 2.], [1., 0., 1., 1.], [3., 1., 0., 1.], [2., 1., 1., 0.]])
    adj = torch.zeros(4, 4, dtype=torch.bool); adj[0, 1] = adj[0, 2] = True
    r = reconstruction(D, adj)
    assert math.isclose(r['map'], (1 + 2 / 3) / 2, rel_tol=1e-6) and r['mean_rank'] == 1.5
    DG = graph_distances([(1, 0), (2, 1), (3, 2)], 4).float()
    out = distortion(3 * DG, DG)
    assert out['distortion'] < 1e-6 and math.isclose(out['scale'], 1 / 3, rel_tol=1e-5)
    noisy = 3 * DG + torch.rand(4, 4) * 0.1
    assert distortion((noisy + noisy.T) / 2, DG)['distortion'] > 0


def test_nk_step_masks_related_negatives():
    "With every node related to u, all negatives are masked and the loss is 0 (the positive is the only candidate)."
    emb = TreeEmbedding(4, 2, 'poincare', init=0.1)
    adj = torch.ones(4, 4, dtype=torch.bool)
    out = nk_step(emb, (torch.tensor([0, 1]), torch.tensor([1, 2])), adj, negs=5)
    assert out['loss'].item() == pytest.approx(0., abs=1e-6)
    adj = torch.zeros(4, 4, dtype=torch.bool)
    assert nk_step(emb, (torch.tensor([0]), torch.tensor([1])), adj, negs=5)['loss'] > 0


def test_tree_embedding_validation():
    with pytest.raises(ValueError, match='geometry'): TreeEmbedding(3, geometry='spherical')
    with pytest.raises(ValueError, match='metric'): TreeEmbedding(3, geometry='learned')
