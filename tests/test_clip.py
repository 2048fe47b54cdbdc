import math, re, pytest, torch
import torch.nn.functional as F
from dl2021.core import set_seed
from dl2021.clip import (CLIP, CLASS_NAMES, COLOURS, HELD_OUT, PROMPTS, STYLES, STYLE_TEMPLATES, TEMPLATES, Renderer,
                         TextTransformer, Tokenizer, CausalSelfAttention, causal_mask, clamp_logit_scale, clip_loss,
                         clip_step, clip_tokenizer, gaussian_blur, held_out_mask, plain_canvas, retrieval_recall,
                         sample_scenes, sobel_edges, zero_shot_weights)


def brute_info_nce(logits):
    "The symmetric InfoNCE written out with loops: mean over i of -log softmax of row i and of column i at i."
    n, tot = len(logits), 0.
    for i in range(n):
        row = sum(math.exp(logits[i, j]) for j in range(n))
        col = sum(math.exp(logits[j, i]) for j in range(n))
        tot += -math.log(math.exp(logits[i, i]) / row) - math.log(math.exp(logits[i, i]) / col)
    return tot / (2 * n)


@pytest.mark.parametrize('n', [1, 3, 7])
def test_info_nce_matches_brute_force(n):
    set_seed(n)
    ell = torch.randn(n, n, dtype=torch.float64) * 4
    assert clip_loss(ell).item() == pytest.approx(brute_info_nce(ell), rel=1e-9)


def test_info_nce_is_symmetric_and_uses_both_directions():
    set_seed(0)
    ell = torch.randn(6, 6, dtype=torch.float64) * 3
    torch.testing.assert_close(clip_loss(ell.T), clip_loss(ell))
    labels = torch.arange(6)
    one_way = F.cross_entropy(ell, labels)            # image->text only: the slip the symmetric loss avoids
    assert abs(one_way - clip_loss(ell)) > 1e-3
    torch.testing.assert_close(clip_loss(ell), (one_way + F.cross_entropy(ell.T, labels)) / 2)


def test_info_nce_limits():
    n = 8
    perfect = torch.eye(n) * 100.                       # matching pairs far above the rest
    assert clip_loss(perfect).item() < 1e-6
    assert clip_loss(torch.zeros(n, n)).item() == pytest.approx(math.log(n))   # chance: log N


def _tiny(**kw):
    return CLIP(len(clip_tokenizer()), vision_widths=(8, 16), vision_heads=2, text_width=16, text_layers=1,
                text_heads=2, embed_dim=16, **kw)


def test_model_logits_are_scaled_cosines_and_swap_symmetric():
    set_seed(0)
    m, tok = _tiny().eval(), clip_tokenizer()
    x, t = torch.rand(4, 3, 56, 56), tok.encode(['a bag', 'a red coat', 'there is a shirt', 'a small sandal'])
    logits = m(x, t)
    I, T = m.encode_image(x), m.encode_text(t)
    torch.testing.assert_close(I.norm(dim=-1), torch.ones(4)); torch.testing.assert_close(T.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(logits, m.scale() * I @ T.T)
    assert logits.abs().max() <= m.scale() + 1e-4
    # the loss of the batch seen from the text side (T as "images") is the same
    torch.testing.assert_close(clip_loss(m.scale() * T @ I.T), clip_loss(logits))
    out = clip_step(m, (x, t))
    assert out['n'] == 4 and 0 <= int(out['correct']) <= 4


def test_temperature_init_and_clipping():
    m = _tiny()
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)                 # tau = 0.07
    with torch.no_grad(): m.logit_scale.fill_(math.log(1e4))
    assert m.scale().item() == pytest.approx(100., rel=1e-5)                      # forward cap
    clamp_logit_scale(m)
    assert m.logit_scale.item() == pytest.approx(math.log(100.), rel=1e-6)        # parameter clamp
    with torch.no_grad(): m.logit_scale.fill_(-3.)
    clamp_logit_scale(m)
    assert m.logit_scale.item() == 0.                                             # and never below scale 1
    # at the cap, the gradient cannot push the scale higher
    with torch.no_grad(): m.logit_scale.fill_(math.log(200.))
    m.scale().backward()
    assert m.logit_scale.grad.item() == 0.
    # a different cap is honoured
    m2 = _tiny(max_logit_scale=30.)
    with torch.no_grad(): m2.logit_scale.fill_(10.)
    assert m2.scale().item() == pytest.approx(30., rel=1e-5)


def test_training_never_emits_held_out_combinations():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (5000,), generator=g)
    sc = sample_scenes(labels, 20_000, seed=1)
    present = torch.arange(2)[None] < sc.n_obj[:, None]
    assert not (held_out_mask(sc.colour, sc.cls) & present).any()
    pat = re.compile('|'.join(rf'\b{c} {k}\b' for c, k in HELD_OUT))
    assert not any(pat.search(c) for c in sc.captions)
    # the check can fail: without the exclusion the same generator does draw and name them
    free = sample_scenes(labels, 20_000, seed=1, held_out=())
    assert (held_out_mask(free.colour, free.cls) & present).any()
    assert any(pat.search(c) for c in free.captions)
    # every other (colour, class) pair does occur
    pairs = {(int(c), int(k)) for c, k, p in zip(sc.colour.flatten(), sc.cls.flatten(), present.flatten()) if p}
    assert len(pairs) == len(COLOURS) * len(CLASS_NAMES) - len(HELD_OUT)
    with pytest.raises(ValueError, match='held out'):
        sample_scenes(labels, 100, colour='red')


def test_captions_describe_the_scene():
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0))
    sc = sample_scenes(labels, 2000, seed=2)
    for i in range(len(sc)):
        cap = sc.captions[i]
        for j in range(int(sc.n_obj[i])):
            assert CLASS_NAMES[sc.cls[i, j]] in cap
        if sc.n_obj[i] == 2:                                  # both positions said, or neither
            assert ' and ' in cap and ('on the left' in cap) == ('on the right' in cap)
        else: assert ' and ' not in cap


def test_scenes_are_deterministic_and_render_on_canvas():
    labels = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(0))
    garments = torch.rand(300, 28, 28)
    a, b = sample_scenes(labels, 64, seed=5), sample_scenes(labels, 64, seed=5)
    assert a.captions == b.captions and torch.equal(a.x0, b.x0)
    r = Renderer(garments)
    x = r(a)
    assert x.shape == (64, 3, 56, 56) and torch.equal(x, r(b)) and 0 <= x.min() and x.max() <= 1
    one = sample_scenes(labels, 3, seed=0, colour='white', size='large', position='middle', style='photo')
    one.x0[:, 0] = one.y0[:, 0] = 14
    g = garments[one.gidx[:, 0]]
    torch.testing.assert_close(r(one), plain_canvas(g))
    for name, fn in (('drawing', sobel_edges), ('blurry', gaussian_blur)):      # styles are the test shifts' maps
        one.style[:] = list(STYLES).index(name)
        torch.testing.assert_close(r(one), plain_canvas(fn(g)))


def test_styles_and_their_captions():
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0))
    sc = sample_scenes(labels, 20_000, seed=4)
    for i, (name, p) in enumerate(STYLES.items()):
        assert abs((sc.style == i).float().mean().item() - p) < .02
    said = {k: [any(c.startswith(t.split('{}')[0]) and t.split('{}')[0] for t in STYLE_TEMPLATES[k]) for c, st in
                zip(sc.captions, sc.style.tolist()) if list(STYLES)[st] == k] for k in STYLE_TEMPLATES}
    for k, v in said.items(): assert .75 < sum(v) / len(v) < .85                   # usually, not always, said
    photo_caps = [c for c, st in zip(sc.captions, sc.style.tolist()) if st == 0]
    assert not any(w in c for c in photo_caps for w in ('drawing', 'sketch', 'blurry', 'blurred'))


def test_tokenizer_round_trip():
    tok = clip_tokenizer()
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0))
    caps = sample_scenes(labels, 3000, seed=3).captions
    ids = tok.encode(caps)
    assert ids.shape == (3000, tok.context_length)
    assert (ids[:, 0] == tok.sos).all() and ((ids == tok.eos).sum(1) == 1).all()
    for c, row in zip(caps, ids): assert tok.decode(row) == c
    for t in ('There is a RED bag!', 'a photo of a t-shirt', '  a   bag  in the   middle '):
        assert tok.decode(tok.encode(t)[0]) == ' '.join(Tokenizer.words(t)).replace('!', '[UNK]')
    assert tok.decode(tok.encode('a purple bag')[0]) == 'a [UNK] bag'
    cut = tok.encode('bag ' * 40, context_length=8)[0]                             # too long: cut, [EOS] kept
    assert cut.tolist() == [tok.sos] + [tok.stoi['bag']] * 6 + [tok.eos]
    for p in PROMPTS['ensemble']:                                                   # prompts use the world's words
        assert '[UNK]' not in tok.decode(tok.encode(p.format('bag'))[0])


def test_causal_mask():
    M = causal_mask(4)
    assert torch.equal(M == 0, torch.ones(4, 4, dtype=torch.bool).tril())
    set_seed(0)
    att = CausalSelfAttention(8, 2)
    x = torch.randn(1, 5, 8)
    y = att(x)
    x2 = x.clone(); x2[0, 3:] = torch.randn(2, 8)                                   # change tokens 3 and 4
    y2 = att(x2)
    torch.testing.assert_close(y[0, :3], y2[0, :3])                                 # earlier outputs unchanged
    assert (y[0, 3:] - y2[0, 3:]).abs().max() > 1e-4


def test_eos_pooling_on_hand_made_input():
    set_seed(0)
    tok = clip_tokenizer()
    txt = TextTransformer(len(tok), tok.context_length, width=16, layers=2, heads=2, eos_id=tok.eos).eval()
    t = torch.tensor([[tok.sos, tok.stoi['a'], tok.stoi['red'], tok.stoi['bag'], tok.eos] + [tok.pad] * 19,
                      [tok.sos, tok.stoi['a'], tok.eos] + [tok.pad] * 21])
    h, f = txt.hidden(t), txt(t)
    torch.testing.assert_close(f, torch.stack([h[0, 4], h[1, 2]]))                  # the [EOS] positions
    junk = t.clone(); junk[0, 5:] = tok.stoi['coat']; junk[1, 3:] = tok.stoi['shirt']
    torch.testing.assert_close(txt(junk), f)                                        # after [EOS]: never read
    other = t.clone(); other[0, 3] = tok.stoi['sneaker']
    assert (txt(other)[0] - f[0]).abs().max() > 1e-4                                # before [EOS]: read
    # mean pooling (a common substitute) would read the padding: it differs
    assert (h[0].mean(0) - f[0]).abs().max() > 1e-4


def test_zero_shot_weights_are_normalised_means():
    set_seed(0)
    m, tok = _tiny().eval(), clip_tokenizer()
    tpl = ('a photo of a {}', 'there is a {}')
    W = zero_shot_weights(m, tok, tpl)
    assert W.shape == (10, 16)
    torch.testing.assert_close(W.norm(dim=-1), torch.ones(10))
    e = m.encode_text(tok.encode([t.format('bag') for t in tpl]))
    torch.testing.assert_close(W[CLASS_NAMES.index('bag')], F.normalize(e.mean(0), dim=0))


def test_retrieval_recall_counts_duplicate_captions():
    I = torch.eye(3); T = torch.eye(3)[[1, 0, 2]]                  # image 0 is closest to text 1, and so on
    r = retrieval_recall(I, T, ['a bag', 'a coat', 'a shirt'], ks=(1, 3))
    assert r['image→text R@1'] == pytest.approx(1 / 3) and r['image→text R@3'] == 1.
    r = retrieval_recall(I, T, ['a bag', 'a bag', 'a shirt'], ks=(1,))          # texts 0 and 1 are the same words
    assert r['image→text R@1'] == 1. and r['text→image R@1'] == 1.
