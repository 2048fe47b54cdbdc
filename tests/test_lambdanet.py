"LambdaNetworks: the lambda layer against a loop-by-loop reference, the lambda convolution, parameter counts, memory."
import pytest
import torch
from dl2021.lambdanet import (LambdaLayer, SelfAttention2d, activation_bytes, attention_map_bytes, content_lambda,
                              lambda_naive, lambda_params, lambda_resnet, position_lambdas, rel_pos_indices)
from dl2021.resnet import ResNet


def _layer(**kw):
    torch.manual_seed(0)
    lay = LambdaLayer(8, 12, k=4, heads=3, u=2, **kw)
    lay.norm_q.running_mean.normal_(); lay.norm_q.running_var.uniform_(.5, 2)
    lay.norm_v.running_mean.normal_(); lay.norm_v.running_var.uniform_(.5, 2)
    return lay.eval()


@pytest.mark.parametrize('kw', [dict(size=(4, 5)), dict(r=3), dict(r=5)])
def test_matches_naive_loops(kw):
    lay = _layer(**kw)
    x = torch.randn(2, 8, 4, 5)
    torch.testing.assert_close(lay(x), lambda_naive(lay, x), atol=1e-4, rtol=1e-4)


def test_transposed_offsets_are_caught():
    "Using the offset n - m instead of m - n (a transposed index table) changes the output: the reference notices."
    lay = _layer(size=(4, 5))
    x = torch.randn(2, 8, 4, 5)
    ref = lambda_naive(lay, x)
    lay.rel_idx = lay.rel_idx.T.contiguous()
    assert (lay(x) - ref).abs().max() > 1e-2


def test_full_scope_lambda_conv_equals_global():
    H = W = 5
    glob = _layer(size=(H, W))
    conv = LambdaLayer(8, 12, k=4, heads=3, u=2, r=2 * H - 1).eval()
    conv.load_state_dict({k: v for k, v in glob.state_dict().items() if k != 'rel_emb'}, strict=False)
    conv.pos_conv.data = glob.rel_emb.detach().reshape(2 * H - 1, 2 * W - 1, 4, 2).permute(2, 3, 0, 1)[:, :, None]
    x = torch.randn(3, 8, H, W)
    torch.testing.assert_close(glob(x), conv(x), atol=1e-5, rtol=1e-5)


def test_content_lambda_softmax_over_context():
    "Keys are normalised over the m context positions: constant values give an all-ones lambda, and order is irrelevant."
    K, V = torch.randn(2, 4, 1, 10), torch.randn(2, 3, 1, 10)
    torch.testing.assert_close(content_lambda(K, torch.ones_like(V)), torch.ones(2, 4, 3))
    perm = torch.randperm(10)
    torch.testing.assert_close(content_lambda(K, V), content_lambda(K[..., perm], V[..., perm]))
    wrong = torch.einsum('bkum,bvum->bkv', K.softmax(1), torch.ones_like(V))     # softmax over k: the classic slip
    assert not torch.allclose(wrong, torch.ones(2, 4, 3))


def test_position_lambdas_shape_and_linearity():
    E, V = torch.randn(6, 6, 4, 2), torch.randn(3, 5, 2, 6)
    lam = position_lambdas(E, V)
    assert lam.shape == (3, 6, 4, 5)
    torch.testing.assert_close(position_lambdas(E, 2 * V), 2 * lam)


def test_rel_pos_indices():
    idx = rel_pos_indices(3, 4)
    assert idx.shape == (12, 12) and idx.min() == 0 and idx.max() == 5 * 7 - 1
    assert idx[0, 1] == idx[5, 6]                          # same offset, different place
    assert (idx + idx.T == 5 * 7 - 1).all()                # opposite offsets are mirror rows
    assert (idx.diagonal() == 2 * 7 + 3).all()             # zero offset: the centre


@pytest.mark.parametrize('kw', [dict(size=(7, 7)), dict(r=23), dict(u=4, r=7), dict(heads=8, size=(4, 4))])
def test_param_count(kw):
    assert sum(p.numel() for p in LambdaLayer(256, 256, **kw).parameters()) == lambda_params(256, 256, **kw)


def test_validation_messages():
    with pytest.raises(ValueError, match='divisible by heads'): LambdaLayer(8, 10, heads=4, size=(3, 3))
    with pytest.raises(ValueError, match='exactly one'): LambdaLayer(8, 8)
    with pytest.raises(ValueError, match='exactly one'): LambdaLayer(8, 8, size=(3, 3), r=3)
    with pytest.raises(ValueError, match='odd'): LambdaLayer(8, 8, r=4)
    with pytest.raises(ValueError, match='built for'): LambdaLayer(8, 8, size=(3, 3))(torch.randn(1, 8, 4, 4))


def test_lesion_switches():
    lay = _layer(size=(4, 5))
    x = torch.randn(2, 8, 4, 5)
    torch.testing.assert_close(lay(x, content=True, position=False) + lay(x, content=False, position=True), lay(x))


def test_attention_memory():
    assert attention_map_bytes(128, 8, 64 * 64) == 64 * 2**30          # the paper's footnote: 64 GB
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    assert activation_bytes(SelfAttention2d(64, heads=4, dim_head=16), x) >= attention_map_bytes(2, 4, 256)
    assert activation_bytes(LambdaLayer(64, r=7), x) < attention_map_bytes(2, 4, 256)


def test_lambda_resnet():
    m, base = lambda_resnet((8, 16, 32, 64)), ResNet((8, 16, 32, 64))
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in base.parameters())
    assert lambda_resnet((8, 16, 32, 64), r=3)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
