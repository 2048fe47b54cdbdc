"""dl2021.batchnorm: the hand-written BatchNorm against torch's, ghost batches, PreciseBN's exact population statistics,
the EMA hook, the statistics switches and the paired-class batches."""
import pytest
import torch
from torch import nn
from dl2021.batchnorm import (BatchNorm2d, batch_stats, precise_bn, BNStatsEMA, bn_layers, get_stats, use_stats, bn_mode,
                              bn_cnn, norm_layer, brightness_contrast, ClassChunkBatches)


def _pair(C=5, momentum=0.1):
    ours, ref = BatchNorm2d(C, momentum=momentum), nn.BatchNorm2d(C, momentum=momentum)
    with torch.no_grad(): ours.weight.normal_(); ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize('momentum', [0.1, 0.5, 1.0])
def test_matches_torch_in_train_mode(momentum):
    torch.manual_seed(0)
    ours, ref = _pair(momentum=momentum)
    for _ in range(4):
        x = (torch.randn(12, 5, 6, 6) * 3 + 2).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        y, y2 = ours(x), ref(x2)
        torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)
        w = torch.randn_like(y)
        (y * w).sum().backward(); (y2 * w).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)
    # the EMA of the unbiased variance, as torch keeps it (a biased variance here would differ by n/(n-1))
    torch.testing.assert_close(ours.running_mean, ref.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-6, rtol=1e-5)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 4


def test_matches_torch_in_eval_mode_and_state_dicts_interchange():
    torch.manual_seed(1)
    ours, ref = _pair()
    for _ in range(3): ours(torch.randn(8, 5, 4, 4) * 2 + 1)
    ref.load_state_dict(ours.state_dict())                    # ours -> torch
    ours.eval(); ref.eval()
    x = torch.randn(3, 5, 4, 4)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    back = BatchNorm2d(5); back.load_state_dict(ref.state_dict()); back.eval()   # torch -> ours
    torch.testing.assert_close(back(x), ref(x), atol=1e-5, rtol=1e-5)
    before = ours.running_mean.clone(); ours(x)
    assert torch.equal(before, ours.running_mean)             # eval mode never updates the EMA


def test_ghost_batches_equal_per_chunk_batchnorm():
    torch.manual_seed(2)
    ghost, ref = BatchNorm2d(4, nbs=4), nn.BatchNorm2d(4)
    x = torch.randn(16, 4, 5, 5) * 2 - 1
    torch.testing.assert_close(ghost(x), torch.cat([ref(c) for c in x.split(4)]), atol=1e-5, rtol=1e-5)
    mean, var = batch_stats(x, 4)
    assert mean.shape == var.shape == (4, 4)
    torch.testing.assert_close(var[2], x[8:12].var((0, 2, 3), unbiased=False))


def test_shuffled_ghost_batches_normalise_random_groups_and_keep_the_order():
    torch.manual_seed(3)
    bn, ref = BatchNorm2d(3, nbs=4, shuffle=True), nn.BatchNorm2d(3)
    x = torch.randn(12, 3, 2, 2)
    torch.manual_seed(10); perm = torch.randperm(12)
    torch.manual_seed(10); y = bn(x)
    expected = torch.cat([ref(c) for c in x[perm].split(4)])[torch.argsort(perm)]
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_batch_size_must_be_a_multiple_of_nbs():
    with pytest.raises(ValueError, match='multiple of nbs'): BatchNorm2d(3, nbs=4)(torch.randn(6, 3, 2, 2))
    with pytest.raises(ValueError, match='nbs'): BatchNorm2d(3, nbs=1)
    with pytest.raises(ValueError, match='momentum'): BatchNorm2d(3, momentum=1.5)


def test_precise_bn_gives_the_exact_population_statistics():
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 3, 3)
    for bn in (BatchNorm2d(3), nn.BatchNorm2d(3)):            # ours and torch's
        net = nn.Sequential(conv, bn).eval()
        X = torch.randn(70, 2, 7, 7) * 3 + 1
        n = precise_bn(net, [(X[i:i + 16],) for i in range(0, 70, 16)])   # 16, 16, 16, 16 and 6
        assert n == 70 and not net.training                   # the model's mode comes back
        with torch.no_grad(): f = conv(X)
        torch.testing.assert_close(bn.running_mean, f.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bn.running_var, f.var((0, 2, 3), unbiased=False), atol=1e-5, rtol=1e-5)


def test_precise_bn_is_not_the_average_of_batch_variances():
    "The population variance includes the spread of the batch means: averaging σ²_B alone (a common shortcut) underestimates it."
    x = torch.cat([torch.zeros(4, 1, 1, 1), torch.ones(4, 1, 1, 1)])       # two batches: all 0, all 1
    bn = BatchNorm2d(1)
    precise_bn(nn.Sequential(bn), [(x[:4],), (x[4:],)])
    torch.testing.assert_close(bn.running_mean, torch.tensor([0.5])); torch.testing.assert_close(bn.running_var, torch.tensor([0.25]))


def test_precise_bn_errors():
    with pytest.raises(ValueError, match='no BatchNorm'): precise_bn(nn.Linear(2, 2), [(torch.randn(2, 2),)])
    with pytest.raises(ValueError, match='no batch'): precise_bn(nn.Sequential(BatchNorm2d(2)), [])


def test_ema_hook_tracks_the_layers_own_ema_and_others():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), BatchNorm2d(3, momentum=0.2), nn.ReLU(), nn.Conv2d(3, 2, 3), BatchNorm2d(2, momentum=0.2))
    tracker = BNStatsEMA(net, momenta=(0.2, 1.0))
    for i in range(4):
        x = torch.randn(8, 1, 9, 9); net(x); tracker(net, i)
    for (m1, v1), (m2, v2) in zip(tracker.stats(0.2), get_stats(net)):
        torch.testing.assert_close(m1, m2); torch.testing.assert_close(v1, v2)
    # momentum 1: the statistics of the last batch only
    with torch.no_grad(): f = net[0](x)
    torch.testing.assert_close(tracker.stats(1.0)[0][0], f.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    tracker.remove()
    with pytest.raises(ValueError, match='momenta'): BNStatsEMA(net, momenta=(0.,))


def test_use_stats_and_bn_mode_restore_the_model():
    torch.manual_seed(6)
    net = bn_cnn((4, 4))
    for _ in range(2): net(torch.randn(8, 1, 12, 12))
    own = get_stats(net)
    zeros = [(torch.zeros_like(m), torch.ones_like(v)) for m, v in own]
    with use_stats(net, zeros): assert all(torch.equal(l.running_mean, torch.zeros_like(l.running_mean)) for l in bn_layers(net))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(own, get_stats(net)))
    net.eval(); x = torch.randn(8, 1, 12, 12)
    with bn_mode(net, 'batch', 4): y = net(x)
    assert [l.stats for l in bn_layers(net)] == ['auto'] * 2 and [l.nbs for l in bn_layers(net)] == [None] * 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(own, get_stats(net)))    # batch mode in eval: no EMA update
    ghost = bn_cnn((4, 4), norm_layer(nbs=4)); ghost.load_state_dict(net.state_dict())
    torch.testing.assert_close(y, ghost.train()(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="torch's BatchNorm"):
        with bn_mode(nn.Sequential(nn.BatchNorm2d(2))): pass


def test_norm_layer_choices():
    assert isinstance(norm_layer('gn')(16), nn.GroupNorm) and isinstance(norm_layer('bn', nbs=4)(8), BatchNorm2d)
    with pytest.raises(ValueError, match="'bn'"): norm_layer('ln')


def test_brightness_contrast_is_identity_by_default_and_clips():
    x = torch.linspace(-0.81, 2.02, 20).reshape(1, 1, 4, 5)   # within the standardised range of [0, 1] pixels
    torch.testing.assert_close(brightness_contrast(x), x, atol=1e-6, rtol=1e-6)
    lo, hi = brightness_contrast(torch.full((1,), -10.)), brightness_contrast(torch.full((1,), 10.), brightness=1.)
    from dl2021.data import FMNIST_MEAN, FMNIST_STD
    torch.testing.assert_close(lo, torch.tensor([-FMNIST_MEAN / FMNIST_STD]))
    torch.testing.assert_close(hi, torch.tensor([(1 - FMNIST_MEAN) / FMNIST_STD]))


def test_class_chunk_batches_have_the_paired_class_pattern():
    torch.manual_seed(7)
    y = torch.arange(10).repeat(30)
    x = y.float()[:, None, None, None]
    b = ClassChunkBatches(x, y, k=5, m=2, chunks=4, seed=0)
    assert len(b) == 300 // 40
    for xb, yb in b:
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)          # images travel with their labels
        for c in yb.reshape(4, 10):
            assert len(c.unique()) == 5 and c.bincount().max() == 2 and torch.equal(c[0::2], c[1::2])
    with pytest.raises(ValueError, match='k'): ClassChunkBatches(x, y, k=11)
