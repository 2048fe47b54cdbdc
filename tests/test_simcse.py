import math, pytest, torch
import torch.nn.functional as F
from dl2021.core import set_seed
from dl2021.simcse import (CLS, MASK, PAD, SEP, SPECIALS, Encoder, SimCSE, align_loss, mask_tokens, mean_cosine,
                           set_dropout, simcse_loss, simcse_step, spearman, sup_simcse_step, trim, uniform_loss)


def brute_simcse(h, hp, hn=None, tau=.05):
    "Eq. 4 / Eq. 5 of the paper written out with loops: mean over i of -log e^{sim(h_i,h_i+)/τ} / Σ_j (e^{sim(h_i,h_j+)/τ} [+ e^{sim(h_i,h_j-)/τ}])."
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))
    n, tot = len(h), 0.
    for i in range(n):
        den = sum(math.exp(cos(h[i], hp[j]) / tau) for j in range(n))
        if hn is not None: den += sum(math.exp(cos(h[i], hn[j]) / tau) for j in range(n))
        tot -= math.log(math.exp(cos(h[i], hp[i]) / tau) / den)
    return tot / n


def test_info_nce_hand_computed():
    # two orthogonal unit vectors, their own positives, τ = 1: each row is -log(e / (e + 1))
    e = torch.eye(2)
    assert simcse_loss(e, e, tau=1.).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # a hand-made 2-d case: h = (1,0),(0,1); h+ = (1,1)/√2, (0,1); τ = 0.5
    h, hp = torch.tensor([[1., 0.], [0., 1.]]), torch.tensor([[1., 1.], [0., 1.]])
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(c / .5) / (math.exp(c / .5) + math.exp(0 / .5)))
    row1 = -math.log(math.exp(1 / .5) / (math.exp(c / .5) + math.exp(1 / .5)))
    assert simcse_loss(h, hp, tau=.5).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


@pytest.mark.parametrize('n', [1, 3, 8])
def test_info_nce_matches_loops_with_and_without_hard_negatives(n):
    set_seed(n)
    h, hp, hn = (torch.randn(n, 5, dtype=torch.float64) for _ in range(3))
    assert simcse_loss(h, hp, tau=.05).item() == pytest.approx(brute_simcse(h, hp), rel=1e-5, abs=1e-6)
    assert simcse_loss(h, hp, hn, tau=.05).item() == pytest.approx(brute_simcse(h, hp, hn), rel=1e-5, abs=1e-6)


def test_info_nce_is_cosine_and_one_directional():
    set_seed(0)
    h, hp = torch.randn(6, 4), torch.randn(6, 4)
    # cosine similarity: rescaling the rows changes nothing (a dot-product loss would change)
    torch.testing.assert_close(simcse_loss(h * torch.rand(6, 1) * 5, hp * 3), simcse_loss(h, hp))
    # rows are the anchors: swapping the roles of h and h+ is a different loss (CLIP's is symmetric, SimCSE's is not)
    assert abs(simcse_loss(h, hp) - simcse_loss(hp, h)) > 1e-4
    # the positives are on the diagonal: permuting the positives makes the loss worse
    assert simcse_loss(h, h, tau=.05) < simcse_loss(h, h.roll(1, 0), tau=.05)


def small_model(p=.1, pooler='cls'):
    set_seed(0)
    return SimCSE(Encoder(50, d=16, layers=2, heads=2, d_ff=32, max_len=12, p=p), pooler)


def tokens(n=4, L=10):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(len(SPECIALS), 50, (n, L), generator=g)
    x[:, 0], x[:, -1] = CLS, SEP
    x[0, 6:] = PAD; x[0, 5] = SEP
    return x


def test_dropout_gives_two_views_and_p0_gives_one():
    m, x = small_model(.1).train(), tokens()
    with torch.no_grad():
        a, b = m(x), m(x)
        assert (a - b).abs().max() > 1e-4                       # two masks, two views
        c, d = m(torch.cat([x, x])).chunk(2)                    # one batch of 2N rows: each row its own masks
        assert (c - d).abs().max() > 1e-4
        set_dropout(m, 0.)
        torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)   # p = 0: identical views
        m.eval(); set_dropout(m, .1)
        torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)   # eval mode: no dropout at all


def test_set_dropout_reaches_attention_and_validates():
    m = small_model(.1)
    set_dropout(m, .3)
    ps = {mod.p for mod in m.modules() if hasattr(mod, 'p') and isinstance(mod.p, float)}
    assert ps == {.3}
    with pytest.raises(ValueError): set_dropout(m, 1.)


def test_fixed_views_are_identical_and_dropout_views_are_not():
    m, x = small_model(.1).train(), tokens(6)
    fixed = simcse_step(m, (x,), views='fixed')
    drop = simcse_step(m, (x,), views='dropout')
    # with one mask for both views the positive similarity is exactly 1: the loss can only come from negatives
    assert fixed['loss'].item() < drop['loss'].item()
    with pytest.raises(ValueError): simcse_step(m, (x,), views='crop')


def test_supervised_step_uses_hard_negatives():
    m, x = small_model(0.).train(), tokens(4)
    t = torch.stack([x, x, x.roll(1, 0)], 1)                        # (N, 3, L)
    out = sup_simcse_step(m, (t,), tau=.05)
    h = m(x)
    expect = simcse_loss(h, h, h.roll(1, 0), tau=.05)
    assert out['loss'].item() == pytest.approx(expect.item(), rel=1e-5)


def test_padding_and_pooling():
    m, x = small_model(0., 'avg').eval(), tokens()
    with torch.no_grad():
        short = x[:1, :6]                                            # the first sentence without its padding
        torch.testing.assert_close(m(x[:1]), m(short), rtol=1e-5, atol=1e-5)
    assert trim(x[:1]).shape[1] == 6
    m2 = small_model(0., 'cls')
    with torch.no_grad():
        torch.testing.assert_close(m2.eval()(x), m2.encoder(x)[:, 0])   # [CLS], no MLP at test time
        torch.testing.assert_close(m2.train()(x), m2.mlp(m2.encoder(x)[:, 0]))   # the MLP in training
    with pytest.raises(ValueError): SimCSE(m.encoder, 'max')


def test_mask_tokens_rates_and_specials():
    set_seed(0)
    x = torch.randint(len(SPECIALS), 1000, (400, 40)); x[:, 0], x[:, -1] = CLS, SEP
    inp, lab = mask_tokens(x, 1000)
    pick = lab != -100
    assert not pick[:, [0, -1]].any()
    assert pick.float().mean().item() == pytest.approx(.15 * 38 / 40, abs=.01)
    assert (inp[pick] == MASK).float().mean().item() == pytest.approx(.8, abs=.03)
    assert (inp[pick] == x[pick]).float().mean().item() == pytest.approx(.1, abs=.03)
    torch.testing.assert_close(inp[~pick], x[~pick])


def test_alignment_uniformity_closed_forms():
    two = torch.tensor([[1., 0.], [-1., 0.]])
    assert uniform_loss(two).item() == pytest.approx(-8., abs=1e-5)              # one pair at squared distance 4
    sq = torch.tensor([[1., 0.], [0., 1.], [-1., 0.], [0., -1.]])
    assert uniform_loss(sq).item() == pytest.approx(math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6), abs=1e-5)
    # the regular simplex of 3 points on the circle: every squared distance is 3
    tri = torch.tensor([[math.cos(a), math.sin(a)] for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)])
    assert uniform_loss(tri).item() == pytest.approx(-6., abs=1e-5)
    assert align_loss(sq, sq).item() == pytest.approx(0.)
    assert align_loss(sq, sq.roll(1, 0)).item() == pytest.approx(2., abs=1e-6)      # orthogonal pairs
    assert align_loss(sq, -sq).item() == pytest.approx(4., abs=1e-6)                # antipodal pairs
    assert align_loss(sq, -sq, alpha=1).item() == pytest.approx(2., abs=1e-6)


def test_uniformity_prefers_spread_points():
    set_seed(0)
    spread = F.normalize(torch.randn(200, 8), dim=-1)
    cone = F.normalize(torch.randn(200, 8) * .1 + torch.ones(8), dim=-1)
    assert uniform_loss(spread) < uniform_loss(cone)
    assert mean_cosine(cone) > .9 and abs(mean_cosine(spread)) < .05


def test_mean_cosine_matches_pairs():
    set_seed(1)
    e = torch.randn(7, 3)
    en = F.normalize(e, dim=-1)
    brute = sum(float(en[i] @ en[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    assert mean_cosine(e).item() == pytest.approx(brute, abs=1e-6)
    assert mean_cosine(torch.tensor([[1., 0.], [-1., 0.]])).item() == pytest.approx(-1.)


def test_spearman_with_ties():
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138, abs=1e-12)   # scipy.stats.spearmanr
    assert spearman([1, 1, 2, 2], [1, 2, 1, 2]) == pytest.approx(0., abs=1e-12)
