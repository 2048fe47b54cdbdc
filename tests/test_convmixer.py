import pytest, torch
from torch import nn
from dl2021.core import n_params, set_seed
from dl2021.convmixer import (ConvMixer, convmixer_1536_20, convmixer_768_32, convmixer_fmnist, convmixer_tweet,
                              load_into_tweet, convmixer_layer, convmixer_stem)

def _count(f, **kw):
    with torch.device('meta'): return n_params(f(**kw))

@pytest.mark.parametrize('factory, paper_m', [(convmixer_1536_20, 51.6), (convmixer_768_32, 21.1)])
def test_param_counts_match_paper(factory, paper_m):
    # ConvMixer paper Table 1 / locuslab/convmixer: 1536/20 (k9, p7) 51.6M, 768/32 (k7, p7) 21.1M
    assert round(_count(factory) / 1e6, 1) == paper_m

def test_factories_configs():
    with torch.device('meta'): m = convmixer_1536_20()
    assert m.stem[0].kernel_size == (7, 7) and m.stem[0].stride == (7, 7)
    assert m.blocks[0][0].fn[0].kernel_size == (9, 9) and len(m.blocks) == 20
    assert isinstance(m.stem[1], nn.GELU)
    with torch.device('meta'): m = convmixer_768_32()
    assert m.blocks[0][0].fn[0].kernel_size == (7, 7) and len(m.blocks) == 32
    # the 80.2% of ConvMixer-768/32 is a ReLU model (official README): every activation is a ReLU
    acts = {type(a) for a in m.modules() if isinstance(a, (nn.ReLU, nn.GELU))}
    assert acts == {nn.ReLU}
    with torch.device('meta'): assert isinstance(convmixer_768_32(act='gelu').stem[1], nn.GELU)

def test_shapes_fmnist():
    m = convmixer_fmnist(dim=16, depth=2)
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert m.blocks(m.stem(torch.randn(3, 1, 28, 28))).shape == (3, 16, 14, 14)
    assert convmixer_stem(8, 4, 1)(torch.randn(2, 1, 28, 28)).shape == (2, 8, 7, 7)

def test_depthwise_is_depthwise_and_same_padding():
    conv = convmixer_layer(8, 3)[0].fn[0]
    assert conv.groups == 8 and conv.weight.shape == (8, 1, 3, 3) and conv.padding == (1, 1)
    for k in (1, 5, 9):
        assert convmixer_layer(4, k)(torch.randn(1, 4, 6, 6)).shape == (1, 4, 6, 6)

@pytest.mark.parametrize('make, msg', [(lambda: convmixer_layer(8, 4), 'kernel_size must be odd'),
                                       (lambda: ConvMixer(8, 2, kernel_size=6), 'kernel_size must be odd'),
                                       (lambda: ConvMixer(8, 2, act='swish'), 'act must be one of'),
                                       (lambda: ConvMixer(8, 0), 'depth must be a positive integer'),
                                       (lambda: ConvMixer(0, 2), 'dim must be a positive integer')])
def test_config_errors_name_the_fix(make, msg):
    with pytest.raises(ValueError, match=msg): make()

@pytest.mark.parametrize('k,p', [(5, 2), (3, 4), (9, 7)])
def test_tweet_equals_readable(k, p):
    set_seed(0)
    ours, tweet = ConvMixer(24, 3, k, p, in_chans=1, num_classes=10), convmixer_tweet(24, 3, k, p, 10, c=1)
    assert n_params(ours) == n_params(tweet)
    # train a step so the BN running stats are not the defaults, then compare in eval mode
    ours.train(); ours(torch.randn(8, 1, 28, 28))
    load_into_tweet(ours, tweet)
    ours.eval(); tweet.eval()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad(): torch.testing.assert_close(ours(x), tweet(x), rtol=0, atol=1e-5)

def test_tweet_differs_without_loading_and_refuses_other_shapes():
    set_seed(0)
    ours, tweet = ConvMixer(16, 2, 5, 2, 1, 10).eval(), convmixer_tweet(16, 2, 5, 2, 10, c=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(): assert not torch.allclose(ours(x), tweet(x), atol=1e-3)
    with pytest.raises(ValueError, match='architectures differ'): load_into_tweet(ours, convmixer_tweet(16, 3, 5, 2, 10, c=1))

def test_residual_present():
    # zeroing the depthwise branch's BN gain leaves the residual: the layer's first half is the identity
    layer = convmixer_layer(4, 3).eval()
    bn = layer[0].fn[2]; nn.init.zeros_(bn.weight); nn.init.zeros_(bn.bias)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad(): torch.testing.assert_close(layer[0](x), x)
