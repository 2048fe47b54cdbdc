"ByT5 vs a subword T5: byte vocabulary, UTF-8 round trips, span corruption, noise, equal parameters, the model's masks."
import random
import numpy as np
import pytest
import torch
from dl2021.byt5 import (EOS, NOISES, PAD, ByteTokenizer, Seq2SeqBatches, SubwordTokenizer, T5, add_noise, cer,
                         fortune_lines, greedy_decode, levenshtein, make_models, match_params, param_split,
                         random_spans_noise_mask, rank_classify, relative_bucket, span_corrupt, span_uncorrupt,
                         spelling_noise, strip_accents, t5_param_count, truncate_utf8, PAPER_CONFIGS)
from dl2021.core import n_params
from dl2021.text import LANGUAGES, available_languages

BT = ByteTokenizer()
SENTINELS = {BT.sentinel(i) for i in range(11)}
SAMPLES = {'en': 'Know thyself.', 'de': 'Übung macht den Meister.', 'es': '¿Qué pasa, señor?', 'it': 'Più è meglio.',
           'pt': 'Não há pão.', 'pl': 'Zażółć gęślą jaźń.', 'cs': 'Příliš žluťoučký kůň.', 'ru': 'Съешь ещё булок.',
           'bg': 'Ще бъде щастие.', 'zh': '天下大事，必作于细。'}


def test_byte_vocabulary():
    assert BT.encode('A') == [0x41 + 3] and BT.vocab_size == 259 and BT.sentinel(0) == 258
    assert BT.decode(BT.encode('日本')) == '日本' and len(BT.encode('日本')) == 6
    assert BT.decode([BT.sentinel(0), *BT.encode('ok'), EOS, PAD]) == 'ok'       # sentinels and specials dropped
    # the sentinels that a line can need are bytes valid UTF-8 never uses
    assert all(BT.sentinel(i) - 3 >= 0xF5 for i in range(11))


@pytest.mark.parametrize('lang', list(LANGUAGES))
def test_utf8_round_trip_every_language(lang):
    s = SAMPLES[lang]
    assert BT.decode(BT.encode(s)) == s
    rng = np.random.default_rng(0)
    ids = BT.encode(s)
    for _ in range(50):
        inp, tgt = span_corrupt(ids, BT.sentinel, 0.3, 3., rng)
        assert span_uncorrupt(inp, tgt, SENTINELS) == ids
        assert BT.decode(span_uncorrupt(inp, tgt, SENTINELS)) == s


def test_span_boundary_inside_multibyte_character():
    "Spans cut Chinese/Cyrillic characters in two; the parts are not valid UTF-8 alone, the reassembly is exact."
    s = SAMPLES['zh'] + SAMPLES['ru']
    ids, rng, cut = BT.encode(s), np.random.default_rng(1), 0
    for _ in range(200):
        inp, tgt = span_corrupt(ids, BT.sentinel, 0.15, 4., rng)
        starts = [tgt[j + 1] for j, t in enumerate(tgt[:-1]) if t in SENTINELS]
        cut += any(0x80 <= t - 3 < 0xC0 for t in starts)                      # a span begins on a continuation byte
        assert BT.decode(span_uncorrupt(inp, tgt, SENTINELS)) == s
    assert cut > 50


@pytest.mark.skipif(not available_languages(), reason='no fortunes installed')
def test_utf8_round_trip_on_the_corpus():
    lines = fortune_lines(available_languages(), 'test', max_bytes=40, per_lang=30)
    assert {l for _, l in lines} == set(available_languages())
    for t, _ in lines:
        assert len(t.encode()) <= 40 and BT.decode(BT.encode(t)) == t
        inp, tgt = span_corrupt(BT.encode(t), BT.sentinel, rng=np.random.default_rng(0))
        assert BT.decode(span_uncorrupt(inp, tgt, SENTINELS)) == t


def test_truncate_never_cuts_a_character():
    for n in range(12): assert truncate_utf8('żółw 冬', n).encode() == 'żółw 冬'.encode()[:len(truncate_utf8('żółw 冬', n).encode())]
    assert truncate_utf8('冬冬', 5) == '冬'


def test_sentinel_format():
    ids = list(range(10, 110))
    inp, tgt = span_corrupt(ids, BT.sentinel, 0.15, 5., np.random.default_rng(0))
    assert inp[-1] == EOS and tgt[-1] == EOS and tgt[0] == BT.sentinel(0)
    s_in = [t for t in inp if t in SENTINELS]; s_tgt = [t for t in tgt if t in SENTINELS]
    assert s_in == s_tgt == [BT.sentinel(i) for i in range(len(s_in))]             # 258, 257, … in order, once each
    assert inp[0] != BT.sentinel(0)                                                # T5 starts with a kept run
    assert len(inp) - 1 - len(s_in) + len(tgt) - 1 - len(s_tgt) == len(ids)        # every id kept or masked, once


@pytest.mark.parametrize('length,density,span', [(1000, 0.15, 20.), (2000, 0.15, 3.), (500, 0.3, 10.)])
def test_noise_density_and_mean_span(length, density, span):
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = random_spans_noise_mask(length, density, span, rng)
        n_spans = int(np.diff(np.r_[0, m.astype(int)]).clip(0).sum())
        assert m.sum() == round(length * density)                                    # the exact density
        assert n_spans == round(round(length * density) / span)                      # spans of the requested mean
        assert abs(m.sum() / n_spans - span) < 0.1 * span
        assert not m[0]                                                             # a kept run first


def test_short_sequences_still_get_one_span():
    m = random_spans_noise_mask(10, 0.15, 20., np.random.default_rng(0))
    assert m.sum() == 2 and len(m) == 10


def test_noise_functions_deterministic_and_right():
    texts = [SAMPLES[l] for l in LANGUAGES]
    for k in NOISES:
        a, b = add_noise(texts, k, .5, seed=7), add_noise(texts, k, .5, seed=7)
        assert a == b, k
        assert add_noise(texts, k, 0.) == texts
    assert add_noise(texts, 'drop', .5, seed=7) != add_noise(texts, 'drop', .5, seed=8)
    assert add_noise(['abc'], 'uppercase', 1.) == ['ABC'] and add_noise(['ab cd'], 'antspeak', 1.) == [' A B   C D ']
    assert all(len(n) < len(t) for n, t in zip(add_noise(texts, 'drop', .5, 1), texts))
    assert all(len(n) > len(t) for n, t in zip(add_noise(texts, 'repetitions', .5, 1), texts))
    assert all(n.lower() == t.lower() for n, t in zip(add_noise(texts, 'random_case', 1., 1), texts))
    with pytest.raises(ValueError, match='pick one of'): add_noise(texts, 'typo', .1)
    assert strip_accents('Příliš žluťoučký kůň') == 'Prilis zlutoucky kun'
    assert spelling_noise('ABC', random.Random(0), p=0.) == 'abc'


def test_equal_parameters():
    "The byte model (3:1 encoder:decoder) has the subword model's (balanced) parameter count, within 2 %."
    for d_sub, vocab in ((64, 4000), (192, 8000)):
        byte, sub = make_models(vocab, d_sub, int(2.5 * d_sub), 2, 3, 1)
        assert abs(n_params(byte) / n_params(sub) - 1) < 0.02
        assert len(byte.encoder) == 3 * len(byte.decoder) and len(sub.encoder) == len(sub.decoder)
        assert param_split(sub)['vocab_frac'] > 0.5 > param_split(byte)['vocab_frac']   # Table 1's point
    d, ff = match_params(10**6, 259, 6, 2)
    assert abs(t5_param_count(259, d, ff, 6, 2, 4, d // 4)['total'] / 10**6 - 1) < 0.01


def test_param_formula_and_paper_table():
    for args in ((259, 40, 96, 3, 1, 4), (1000, 32, 80, 2, 2, 4)):
        assert t5_param_count(*args, d_kv=args[1] // args[5])['total'] == n_params(T5(*args))
    small = {k: t5_param_count(*PAPER_CONFIGS[k]) for k in ('mT5-Small', 'ByT5-Small')}
    assert abs(small['mT5-Small']['total'] / 300e6 - 1) < 0.02 and abs(small['ByT5-Small']['total'] / 300e6 - 1) < 0.02
    assert 0.84 < small['mT5-Small']['vocab_frac'] < 0.86 and small['ByT5-Small']['vocab_frac'] < 0.005


def test_relative_buckets_and_masks():
    r = relative_bucket(torch.arange(-300, 301), bidirectional=True)
    assert r.min() == 0 and r.max() == 31 and r[300] == 0 and r[301] == 17 and r[299] == 1
    c = relative_bucket(torch.arange(-300, 301), bidirectional=False)
    assert (c[301:] == 0).all() and c[299] == 1 and c.max() == 31
    torch.manual_seed(0)
    m = T5(259, 32, 64, 2, 1).eval()
    x, y = torch.randint(3, 259, (2, 6)), torch.randint(3, 259, (2, 4))
    y2 = y.clone(); y2[:, 2:] = 5
    assert torch.allclose(m(x, y)[:, :2], m(x, y2)[:, :2], atol=1e-5)               # the decoder cannot look ahead
    xp = torch.cat([x, torch.zeros(2, 4, dtype=torch.long)], 1)
    assert torch.allclose(m(x, y), m(xp, y), atol=1e-5)                              # padding is invisible


def test_batches_and_inference_helpers():
    b = Seq2SeqBatches([([5, EOS], [6, EOS])] * 5, bs=2, steps=4)
    batches = list(b)
    assert len(batches) == 4 and all(s.shape == (2, 2) for s, _, _ in batches)
    src, tin, tout = batches[0]
    assert tin[:, 0].eq(PAD).all() and tout[:, 0].eq(6).all()
    torch.manual_seed(0)
    m = T5(259, 16, 32, 1, 1)
    assert set(rank_classify(m, BT, ['abc', 'de'], ['en', 'de'])) <= {'en', 'de'}
    assert all(isinstance(o, str) for o in greedy_decode(m, BT, ['abc'], max_len=5))
    assert levenshtein('', 'abc') == 3 and cer(['abc'], ['abc']) == 0


def test_subword_tokenizer_round_trip_and_sentinels():
    texts = [SAMPLES[l] for l in LANGUAGES] * 20
    sw = SubwordTokenizer(texts, vocab_size=400, n_sentinels=4)
    for t in texts[:10]: assert sw.decode(sw.encode(t)) == t
    assert sw.sentinel(0) == sw.vocab_size - 1 and sw.tok.id_to_token(sw.sentinel(0)) == '<extra_id_0>'
    with pytest.raises(ValueError): sw.sentinel(4)
    assert sw.encode('\u0f00')[-1] == 2                                           # an unseen character is <unk>


def test_damaged_words_need_restoring():
    from dl2021.byt5 import damaged_words
    ws = damaged_words(['Über alles, señor Müller', 'plain words only here', 'Zażółć 2024'])
    assert ws == ['Müller', 'Zażółć', 'señor', 'Über']
    assert all(strip_accents(w).lower() != w for w in ws)
