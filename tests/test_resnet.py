"The course's baseline ResNet: the residual block, the plain variant, configuration errors, and train_baseline's cache."
import pytest, torch
import torch.nn.functional as F
from torch import nn
from dl2021.core import n_params
from dl2021.resnet import ResBlock, ResNet, conv_bn, train_baseline, baseline_config, BASELINE


def test_shapes_and_features():
    m = ResNet()
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert m.features(torch.randn(2, 1, 32, 32)).shape == (2, 256)
    assert ResNet((8, 16), n_classes=3, c_in=3)(torch.randn(1, 3, 28, 28)).shape == (1, 3)


def test_identity_is_easy_for_a_residual_block():
    x = torch.randn(2, 8, 7, 7)
    blk, plain = ResBlock(8, 8).eval(), ResBlock(8, 8, residual=False).eval()
    for b in (blk, plain): nn.init.zeros_(b.f[2][1].weight); nn.init.zeros_(b.f[2][1].bias)
    with torch.no_grad():
        assert torch.equal(blk(x), F.relu(x))                 # F(x) = 0: the input passes through
        assert torch.equal(plain(x), torch.zeros_like(x))     # a plain block in the same state cuts everything off
    assert plain.shortcut is None


def test_projection_shortcut_when_shape_changes():
    blk = ResBlock(8, 16, stride=2)
    assert isinstance(blk.shortcut, nn.Sequential) and blk.shortcut[0].kernel_size == (1, 1)
    assert blk.shortcut[0].stride == (2, 2)
    assert isinstance(ResBlock(8, 8).shortcut, nn.Identity)


def test_depth_counts_weight_layers():
    for d in (1, 2, 3):
        m = ResNet(depth=d)
        n3 = sum(isinstance(l, nn.Conv2d) and l.kernel_size == (3, 3) for l in m.modules())
        assert n3 + 1 == 8 * d + 2                            # 3×3 convs (stem + 2 per block) + the head
    assert n_params(ResNet(residual=False)) < n_params(ResNet())   # plain: no projection shortcuts


@pytest.mark.parametrize('make, msg', [(lambda: ResNet(widths=()), 'widths must be'),
                                       (lambda: ResNet(widths=(8, 0)), 'widths must be'),
                                       (lambda: ResNet(depth=0), 'blocks per stage'),
                                       (lambda: ResBlock(4, 4, stride=3), 'stride must be 1 or 2')])
def test_config_errors_name_the_fix(make, msg):
    with pytest.raises(ValueError, match=msg): make()


def test_presets_defined():
    assert set(BASELINE) == {'smoke', 'cpu', 'full'}
    assert baseline_config('full').widths == (32, 64, 128, 256)
    assert baseline_config('cpu').preset == 'cpu'


def test_train_baseline_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv('DL2021_CHECKPOINTS', str(tmp_path))
    m1, meta1 = train_baseline('smoke', device='cpu')
    m2, meta2 = train_baseline('smoke', device='cpu')
    assert not meta1['cached'] and meta2['cached']
    assert meta2['test_acc'] == meta1['test_acc'] and meta2['preset'] == 'smoke' and len(meta2['epochs']) == 1
    assert not m2.training
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad(): torch.testing.assert_close(m1(x), m2(x))
    assert len(list(tmp_path.glob('resnet-baseline-smoke-*.pt'))) == 1
