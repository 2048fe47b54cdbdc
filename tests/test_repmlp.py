import copy, pytest, torch
from torch import nn
import torch.nn.functional as F
from dl2021.core import n_params, set_seed
from dl2021.repmlp import (RepMLPBlock, repmlp_fmnist, reparameterize, randomize_bn, conv_to_fc, fuse_bn,
                           partition, unpartition)

@pytest.mark.parametrize('C,O,H,h,ks,g,r', [(8, 8, 14, 7, (1, 3, 5), 4, 1), (4, 6, 8, 4, (3,), 2, 2),
                                             (6, 6, 7, 7, (1, 3), 1, 1), (4, 4, 6, 3, (), 1, 1)])
def test_merge_is_exact(C, O, H, h, ks, g, r):
    set_seed(0)
    blk = randomize_bn(RepMLPBlock(C, O, H, H, h, h, reparam_conv_k=ks, fc3_groups=g, fc1_fc2_reduction=r)).eval()
    x = torch.randn(3, C, H, H)
    y = blk(x)
    merged = reparameterize(blk)
    assert merged.deployed and not blk.deployed
    assert len(merged.local) == 0 and not hasattr(merged, 'fc3_bn')
    with torch.no_grad(): torch.testing.assert_close(merged(x), y, rtol=0, atol=1e-4)

def test_wrong_merge_differs():
    set_seed(0)
    blk = randomize_bn(RepMLPBlock(8, 8, 14, 14, 7, 7, reparam_conv_k=(1, 3), fc3_groups=2)).eval()
    x = torch.randn(2, 8, 14, 14)
    y = blk(x)
    wrong = copy.deepcopy(blk).merge(fold_bn=False)
    assert (wrong(x) - y).abs().max() > 1e-2
    # dropping the conv branches instead of merging them also differs
    dropped = copy.deepcopy(blk); dropped.local = nn.ModuleDict(); dropped.ks = ()
    dropped.merge()
    assert (dropped(x) - y).abs().max() > 1e-2

def test_network_merge_exact_after_training_steps():
    set_seed(0)
    net = repmlp_fmnist(dim=16, depth=2)
    opt = torch.optim.AdamW(net.parameters(), 1e-2)
    for _ in range(3):                                   # real (non-default) BN statistics and weights
        x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
        loss = F.cross_entropy(net(x), y); opt.zero_grad(); loss.backward(); opt.step()
    net.eval()
    x = torch.randn(5, 1, 28, 28)
    deployed = reparameterize(net)
    torch.testing.assert_close(deployed(x), net(x), rtol=0, atol=1e-4)
    assert n_params(deployed) < n_params(net)

def test_conv_to_fc_matches_conv():
    kernel = torch.randn(6, 2, 5, 5)
    x = torch.randn(2, 6, 4, 4)
    W = conv_to_fc(kernel, 4, 4, groups=3)
    assert W.shape == (6 * 16, 2 * 16)
    out = F.conv1d(x.reshape(2, -1, 1), W[..., None], groups=3).view(2, 6, 4, 4)
    torch.testing.assert_close(out, F.conv2d(x, kernel, padding=2, groups=3), atol=1e-5, rtol=0)

def test_fuse_bn():
    fc, bn = nn.Linear(5, 4), randomize_bn(nn.BatchNorm1d(4)).eval()
    W, b = fuse_bn(fc.weight, bn, fc.bias)
    x = torch.randn(3, 5)
    torch.testing.assert_close(x @ W.t() + b, bn(fc(x)), atol=1e-5, rtol=0)

def test_partition_roundtrip_and_shapes():
    x = torch.randn(2, 3, 8, 12)
    p = partition(x, 4, 4)
    assert p.shape == (12, 3, 4, 4)
    torch.testing.assert_close(p[1], x[0, :, 0:4, 4:8])
    torch.testing.assert_close(unpartition(p, 8, 12), x)

def test_fmnist_shapes_and_fc3_size():
    net = repmlp_fmnist()
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    blk = net.blocks[0].repmlp
    assert blk.fc3.weight.numel() == (32 * 49) * (32 * 49) // 4 and blk.fc3.groups == 4


def test_merge_is_a_method_of_the_class():
    # a real method (defined in the class body), not a function patched in afterwards
    assert 'merge' in RepMLPBlock.__dict__ and RepMLPBlock.merge.__qualname__ == 'RepMLPBlock.merge'
    assert RepMLPBlock.merged_fc3.__qualname__ == 'RepMLPBlock.merged_fc3'

def test_merged_fc3_matches_the_training_form_partition_output():
    set_seed(0)
    blk = randomize_bn(RepMLPBlock(4, 4, 6, 6, 6, 6, reparam_conv_k=(1, 3), fc3_groups=2)).eval()   # no global perceptron
    x = torch.randn(3, 4, 6, 6)
    W, b = blk.merged_fc3()
    out = F.conv1d(x.reshape(3, -1, 1), W[..., None], b, groups=2).view(3, 4, 6, 6)
    torch.testing.assert_close(out, blk(x).detach(), rtol=0, atol=1e-4)

@pytest.mark.parametrize('make, msg', [
    (lambda: RepMLPBlock(8, 8, 14, 14, 5, 5), 'must tile the 14×14 map'),
    (lambda: RepMLPBlock(6, 6, 14, 14, 7, 7, fc3_groups=4), 'must divide the channels'),
    (lambda: RepMLPBlock(8, 8, 14, 14, 7, 7, reparam_conv_k=(1, 4)), 'use odd sizes'),
    (lambda: RepMLPBlock(8, 8, 14, 14, 7, 7, reparam_conv_k=(9,)), 'use odd sizes no larger than the 7×7 partition'),
    (lambda: RepMLPBlock(8, 8, 14, 14, 7, 7, fc1_fc2_reduction=3), 'must divide C'),
    (lambda: repmlp_fmnist(patch_size=3), 'not divisible by patch_size 3'),
    (lambda: repmlp_fmnist(part=5), 'must tile the 14×14 map'),
    (lambda: repmlp_fmnist(dim=30, reduction=4), 'positive divisor of the 30 channels'),
    (lambda: repmlp_fmnist(depth=0), 'number of RepMLP bottlenecks'),
])
def test_config_errors_name_the_fix(make, msg):
    with pytest.raises(ValueError, match=msg): make()
