import pytest, torch
from dl2021.glom import (neighbourhood, consensus_weights, consensus, GLOM, shapes_scenes, patch_labels, corrupt,
                         glom_step, deleted_patch_mse, island_score, pca_colours)


def test_neighbourhood_mask():
    m = neighbourhood(3, 1)
    assert m.shape == (9, 9) and not m.diagonal().any()
    assert m.sum(1).tolist() == [3, 5, 3, 5, 8, 5, 3, 5, 3]
    assert torch.equal(m, m.T)
    assert neighbourhood(3, None).sum() == 9 * 8
    assert neighbourhood(3, 0).sum() == 0 and neighbourhood(3, 0, self_loops=True).sum() == 9


def test_consensus_weights_sum_to_one_and_respect_the_neighbourhood():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 8)
    for radius in (1, 2, None):
        m = neighbourhood(4, radius)
        a = consensus_weights(x, 3., m)
        torch.testing.assert_close(a.sum(-1), torch.ones(3, 16))
        assert (a[:, ~m] == 0).all() and (a >= 0).all()


def test_consensus_weights_by_hand():
    # two locations, d = 2: the only neighbour gets weight 1; three locations: softmax of β·x_i·x_j/d
    x = torch.tensor([[[1., 0.], [0., 1.], [1., 1.]]])
    a = consensus_weights(x, 2., ~torch.eye(3, dtype=torch.bool))
    # row 0: neighbours 1 (x·x = 0) and 2 (x·x = 1): logits 0 and 2·1/2 = 1
    e = torch.tensor(1.).exp()
    torch.testing.assert_close(a[0, 0], torch.stack([torch.tensor(0.), 1 / (1 + e), e / (1 + e)]))


def test_island_is_a_fixed_point_and_pulls_an_outlier():
    v = torch.randn(6)
    island = v.repeat(2, 9, 1)
    m = neighbourhood(3, 1)
    torch.testing.assert_close(consensus(island, 5., m), island)
    x = island.clone(); x[:, 4] = torch.randn(6)
    torch.testing.assert_close(consensus(x, 5., m)[:, 4], island[:, 0])     # all its neighbours hold v


def test_glom_shapes_and_start_state():
    g = GLOM(img_size=16, patch_size=4, levels=2, dim=8, hidden=12, iters=3, radius=(1, None))
    s = g(torch.rand(2, 1, 16, 16), return_all=True)
    assert s.shape == (4, 2, 16, 2, 8)
    torch.testing.assert_close(s[0].std(1), torch.zeros(2, 2, 8))              # t = 0: the same vector everywhere
    assert g.reconstruct(s[-1]).shape == (2, 1, 16, 16)
    img = torch.rand(3, 1, 16, 16)
    assert torch.equal(g.unpatch(g.patches(img)), img)
    assert torch.equal(g.patches(img)[0, 1], img[0, 0, :4, 4:8].flatten())      # patch 1 is the second of the first row


def test_glom_validates_arguments():
    with pytest.raises(ValueError, match='multiple'): GLOM(img_size=30, patch_size=4)
    with pytest.raises(ValueError, match='radius'): GLOM(levels=3, radius=(1, 2))
    with pytest.raises(ValueError, match='weights'): GLOM(weights=(0., 0., 0., 0.))


def test_no_consensus_means_columns_are_independent():
    # with w_att = 0 a column's embeddings depend on its own patch only: changing another patch changes nothing here
    torch.manual_seed(0)
    g = GLOM(img_size=8, patch_size=4, levels=2, dim=8, hidden=12, iters=3, radius=(1, None), weights=(1, 1, 1, 0))
    img = torch.rand(1, 1, 8, 8)
    img2 = img.clone(); img2[..., 4:, 4:] = torch.rand(4, 4)                    # change patch 3
    torch.testing.assert_close(g(img)[:, :3], g(img2)[:, :3])
    g.w[3] = 1.
    assert not torch.allclose(g(img)[:, :3], g(img2)[:, :3])                    # with consensus, information flows


def test_update_is_a_weighted_average():
    # with weights (1, 0, 0, 0) the state never changes: the previous value, layer-normalised, is a fixed point
    g = GLOM(img_size=8, patch_size=4, levels=2, dim=8, hidden=12, iters=4, radius=(1, None), weights=(1, 0, 0, 0))
    s = g(torch.rand(2, 1, 8, 8), return_all=True)
    torch.testing.assert_close(s[-1], s[0])


def test_tiny_training_step_reduces_loss():
    torch.manual_seed(0)
    g = GLOM(img_size=16, patch_size=4, levels=2, dim=8, hidden=16, iters=2, radius=(1, None))
    x, _ = shapes_scenes(16, size=16, seed=0)
    opt = torch.optim.Adam(g.parameters(), 1e-2)
    losses = []
    for _ in range(15):
        torch.manual_seed(1)                                                     # the same corruption every step
        out = glom_step(g, (x,)); opt.zero_grad(); out['loss'].backward(); opt.step(); losses.append(out['loss'].item())
    assert out['n'] == 16 and losses[-1] < losses[0]


def test_shapes_scenes_and_labels():
    x, m = shapes_scenes(5, size=32, seed=3)
    assert x.shape == (5, 1, 32, 32) and m.shape == (5, 32, 32)
    assert ((m > 0) == (x[:, 0] > 0)).float().mean() > 0.99                      # objects are where the pixels are
    x2, m2 = shapes_scenes(5, size=32, seed=3)
    assert torch.equal(x, x2) and torch.equal(m, m2)                             # deterministic per seed
    assert 2 <= m.amax((1, 2)).min() and m.amax((1, 2)).max() <= 3
    lab = patch_labels(m, 4)
    assert lab.shape == (5, 64)


def test_corrupt():
    img = torch.ones(4, 1, 8, 8)
    noisy, deleted = corrupt(img, 4, p_delete=0.5, noise=0., generator=torch.Generator().manual_seed(0))
    assert deleted.shape == (4, 4)
    blocks = noisy.view(4, 1, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(4, 4, -1)
    assert torch.equal(blocks.sum(-1) == 0, deleted)


def test_island_score_by_hand():
    # 4 locations: 1, 2 on object 1 with equal embeddings, 3 on object 2 orthogonal, 0 background
    L, d = 1, 2
    z = torch.tensor([[9., 9.], [1., 0.], [1., 0.], [0., 1.]]).view(1, 1, 4, L, d)
    labels = torch.tensor([[0, 1, 1, 2]])
    s = island_score(z, labels)
    # same-object pairs (1,2),(2,1): cos 1; different-object pairs (1,3),(3,1),(2,3),(3,2): cos 0
    torch.testing.assert_close(s, torch.ones(1, 1))


def test_deleted_patch_mse_and_pca_colours():
    g = GLOM(img_size=16, patch_size=4, levels=2, dim=8, hidden=12, iters=2, radius=(1, None)).eval()
    x, _ = shapes_scenes(4, size=16)
    err, base = deleted_patch_mse(g, x)
    assert err >= 0 and base >= 0
    c = pca_colours(torch.randn(3, 16, 8))
    assert c.shape == (3, 16, 3) and c.min() >= 0 and c.max() <= 1
