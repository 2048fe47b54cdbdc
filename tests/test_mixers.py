"Tests for the patch-mixing architectures: MLP-Mixer, ResMLP, gMLP and the feed-forward-only ViT."
import copy
import pytest
import torch
from torch import nn

from dl2021.core import n_params
from dl2021.train import param_groups
from dl2021 import resmlp, gmlp, ffonly
from dl2021.mixer import (MLPMixer, mixer_s16, mixer_b16, mixer_fmnist, mixer_param_count, PatchEmbed, MLP, MixerBlock,
                          permute_patches, permute_mixer_weights, token_mixing_weights)


def _count(make, **kw) -> int:
    "Parameter count of `make(**kw)` built on the meta device (shapes only: fast, no memory)."
    with torch.device('meta'): return n_params(make(**kw))


# ---------------------------------------------------------------- MLP-Mixer (2105.01601)
def test_mixer_paper_param_counts_exclude_the_head():
    # Table 1 of the paper counts parameters WITHOUT the classifier head: Mixer-S/16 18M, Mixer-B/16 59M (224 px)
    s, b = _count(mixer_s16), _count(mixer_b16)
    head_s, head_b = 512 * 1000 + 1000, 768 * 1000 + 1000
    assert s == 18_528_264 and b == 59_880_472          # = timm's mixer_s16_224 / mixer_b16_224 (with the head)
    assert round((s - head_s) / 1e6, 1) == 18.0 and round((b - head_b) / 1e6) == 59
    assert round(s / 1e6) != 18                          # with the head S/16 would round to 19: Table 1 has no head
    assert s - head_s == mixer_param_count(dim=512, depth=8, token_dim=256, channel_dim=2048, head=False)
    assert s == mixer_param_count(dim=512, depth=8, token_dim=256, channel_dim=2048)


def test_mixer_token_and_channel_widths_not_swapped():
    # A popular port gave the token MLP D_C and the channel MLP D_S: the count would drop to ~9.5M / ~23M.
    m = mixer_s16()
    blk = m.blocks[0]
    assert blk.token_mlp.fc1.in_features == 196 and blk.token_mlp.fc1.out_features == 256      # S -> D_S
    assert blk.channel_mlp.fc1.in_features == 512 and blk.channel_mlp.fc1.out_features == 2048  # C -> D_C
    assert _count(mixer_s16, token_dim=2048, channel_dim=256) // 10**6 != 18
    assert _count(mixer_b16, token_dim=3072, channel_dim=384) // 10**6 != 59


def test_mixer_layernorm_eps_is_flax_default():
    # the official Flax code (and timm) use LayerNorm eps 1e-6, not PyTorch's 1e-5
    m = mixer_fmnist(depth=1)
    assert {ln.eps for ln in m.modules() if isinstance(ln, nn.LayerNorm)} == {1e-6}


def test_mixer_shapes_and_api():
    m = mixer_fmnist(depth=2)
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert m.features(torch.randn(3, 1, 28, 28)).shape == (3, 128)
    assert PatchEmbed(28, 7, 1, 8)(torch.randn(2, 1, 28, 28)).shape == (2, 16, 8)
    assert MLP(5, 7)(torch.randn(2, 3, 5)).shape == (2, 3, 5)
    assert token_mixing_weights(m).shape == (2, 64, 7, 7)
    m = MLPMixer(img_size=32, patch_size=8, in_chans=3, num_classes=5, dim=16, depth=1, token_dim=8, channel_dim=32)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_mixer_head_starts_at_zero():
    m = mixer_fmnist(depth=1)
    assert torch.equal(m(torch.randn(2, 1, 28, 28)), torch.zeros(2, 10))   # official init: uniform predictions


@pytest.mark.parametrize('make, msg', [
    (lambda: PatchEmbed(28, 5, 1, 8), 'not divisible by patch_size 5'),
    (lambda: PatchEmbed(30, 4, 1, 8), 'not divisible by patch_size 4'),
    (lambda: PatchEmbed(28, 0, 1, 8), 'patch_size must be a positive integer'),
    (lambda: mixer_fmnist(depth=0), 'depth must be a positive integer'),
    (lambda: mixer_fmnist(token_dim=0), 'token_dim must be a positive integer'),
    (lambda: MLP(4, 8, drop=1.0), 'dropout probability'),
])
def test_mixer_config_errors_name_the_fix(make, msg):
    with pytest.raises(ValueError, match=msg): make()


def test_patch_embed_error_lists_valid_patch_sizes():
    with pytest.raises(ValueError, match=r'\[1, 2, 4, 7, 14, 28\]'): PatchEmbed(28, 5, 1, 8)


def test_mixer_no_positional_encoding_permutation_equivariant():
    torch.manual_seed(0)
    perm, pixel_perm = torch.randperm(49), torch.randperm(16)
    x = torch.randn(4, 1, 28, 28)
    xp = permute_patches(x, perm, 4)
    assert torch.equal(permute_patches(xp, perm.argsort(), 4), x)
    # the convention: output patch s is input patch perm[s]
    assert torch.equal(xp[0, 0, :4, :4], x[0, 0, 4 * (perm[0] // 7):4 * (perm[0] // 7) + 4, 4 * (perm[0] % 7):4 * (perm[0] % 7) + 4])
    m = mixer_fmnist(depth=2)
    torch.nn.init.normal_(m.head.weight)
    with torch.no_grad():
        y = m(x)
        assert not torch.allclose(m(xp), y, atol=1e-3)                       # the same weights do see the order...
        assert torch.allclose(permute_mixer_weights(copy.deepcopy(m), perm)(xp), y, atol=1e-4)   # ...permuted ones undo it
        xpp = permute_patches(x, perm, 4, pixel_perm)                         # the paper's shuffle: patches + pixels
        assert torch.allclose(permute_mixer_weights(copy.deepcopy(m), perm, pixel_perm)(xpp), y, atol=1e-4)
        # the wrong transpose (W1 Π instead of W1 Πᵀ) does not undo it
        wrong = copy.deepcopy(m)
        for blk in wrong.blocks:
            blk.token_mlp.fc1.weight.copy_(blk.token_mlp.fc1.weight[:, perm.argsort()])
            blk.token_mlp.fc2.weight.copy_(blk.token_mlp.fc2.weight[perm]); blk.token_mlp.fc2.bias.copy_(blk.token_mlp.fc2.bias[perm])
        assert not torch.allclose(wrong(xp), y, atol=1e-3)
    assert not any('pos' in n for n, _ in m.named_parameters())


# ---------------------------------------------------------------- ResMLP (2105.03404)
def test_resmlp_s12_params():
    # ResMLP-S12: 15M parameters (Table 1 / facebookresearch/deit README_resmlp.md); timm resmlp_12_224 15.35M
    n = _count(resmlp.resmlp_s12)
    assert round(n / 1e6) == 15 and n == 15_350_872 == resmlp.resmlp_param_count()


def test_resmlp_structure():
    m = resmlp.resmlp_fmnist(depth=2)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert not any(isinstance(mod, torch.nn.LayerNorm) for mod in m.modules())       # Affine, not LayerNorm
    blk = m.blocks[0]
    assert isinstance(blk.token_mix, torch.nn.Linear)                                 # a LINEAR cross-patch layer
    assert torch.allclose(blk.gamma1, torch.full_like(blk.gamma1, 0.1))
    assert resmlp.layerscale_init_for_depth(12) == 0.1
    assert resmlp.layerscale_init_for_depth(24) == 1e-5
    assert resmlp.layerscale_init_for_depth(36) == 1e-6
    a = resmlp.Affine(4)
    x = torch.randn(3, 4)
    assert torch.equal(a(x), x)                                                       # identity at init


@pytest.mark.parametrize('kw, msg', [(dict(patch_size=5), 'not divisible by patch_size 5'),
                                     (dict(layerscale_init=0.), 'layerscale_init must be > 0'),
                                     (dict(depth=0), 'depth must be a positive integer'),
                                     (dict(mlp_ratio=0), 'mlp_ratio must be a positive integer')])
def test_resmlp_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg): resmlp.resmlp_fmnist(**kw)


# ---------------------------------------------------------------- gMLP (2105.08050)
def test_gmlp_ti_params():
    # gMLP-Ti (Table 1): L=30, d_model=128, d_ffn=768, 6M parameters (timm gmlp_ti16_224: 5.87M)
    n = _count(gmlp.gmlp_ti)
    assert round(n / 1e6) == 6 and n == 5_867_328 == gmlp.gmlp_param_count()


def test_gmlp_layernorm_eps_as_timm():
    m = gmlp.gmlp_fmnist(depth=1)
    assert m.norm.eps == 1e-6 and m.blocks[0].norm.eps == 1e-6 and m.blocks[0].sgu.norm.eps == 1e-5


def test_gmlp_sgu_starts_as_identity_gate():
    torch.manual_seed(0)
    sgu = gmlp.SpatialGatingUnit(dim=16, num_patches=49)
    z = torch.randn(2, 49, 16)
    z1, _ = z.chunk(2, dim=-1)
    with torch.no_grad():
        assert sgu(z).shape == (2, 49, 8)
        assert torch.allclose(sgu(z), z1, atol=1e-3)            # W ~ 0, b = 1: s(Z) = Z1 * 1
        torch.nn.init.normal_(sgu.proj.weight)
        assert not torch.allclose(sgu(z), z1, atol=1e-1)
    m = gmlp.gmlp_fmnist(depth=2)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_gmlp_closed_gate_stalls_U_not_W():
    # with gate bias b = 0 (and W ~ 0) the FFN weights get ~no gradient, the spatial projection W an O(1) one
    torch.manual_seed(0)
    norms = {}
    for b in (0., 1.):
        torch.manual_seed(0)
        m = gmlp.gmlp_fmnist(depth=2, dim=32, ffn_dim=64, gate_bias=b)
        torch.nn.functional.cross_entropy(m(torch.randn(16, 1, 28, 28)), torch.randint(0, 10, (16,))).backward()
        blk = m.blocks[0]
        norms[b] = (blk.proj_in.weight.grad.norm().item(), blk.sgu.proj.weight.grad.norm().item())
    assert norms[0.][0] < 1e-3 * norms[1.][0]
    assert norms[0.][1] > 0.1 * norms[1.][1]


@pytest.mark.parametrize('make, msg', [(lambda: gmlp.gmlp_fmnist(ffn_dim=101), 'use an even dim'),
                                       (lambda: gmlp.gmlp_fmnist(patch_size=3), 'not divisible by patch_size 3'),
                                       (lambda: gmlp.SpatialGatingUnit(8, 4, gate_init_std=-1.), 'standard deviation'),
                                       (lambda: gmlp.gmlp_fmnist(depth=0), 'depth must be a positive integer')])
def test_gmlp_config_errors(make, msg):
    with pytest.raises(ValueError, match=msg): make()


# ---------------------------------------------------------------- FF-only ViT (2105.02723)
def test_ffonly_params():
    # lukemelas/do-you-even-need-attention README: FF-tiny 7.7M, FF-base 62M, FF-large 206M
    assert round(_count(ffonly.ffonly_tiny) / 1e5) == 77
    assert round(_count(ffonly.ffonly_base) / 1e6) == 62
    assert round(_count(ffonly.ffonly_large) / 1e6) == 206


def test_ffonly_shapes():
    m = ffonly.ffonly_fmnist(depth=2)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert any('pos' in n for n, _ in m.named_parameters())       # unlike the Mixer, it has a position embedding


def test_ffonly_embeddings_get_no_weight_decay():
    m = ffonly.ffonly_fmnist(depth=1)
    assert m.no_weight_decay() == {'pos_embed', 'cls_token'}
    decay, no_decay = param_groups(m, wd=0.05)
    assert decay['weight_decay'] == 0.05 and no_decay['weight_decay'] == 0.
    in_no_decay = lambda p: any(p is q for q in no_decay['params'])
    assert in_no_decay(m.pos_embed) and in_no_decay(m.cls_token)
    assert not in_no_decay(m.blocks[0].mlp_channels.fc1.weight)      # weight matrices are decayed
    assert len(decay['params']) + len(no_decay['params']) == len(list(m.parameters()))


@pytest.mark.parametrize('kw, msg', [(dict(mlp_ratio=0), 'mlp_ratio'), (dict(patch_size=3), 'not divisible by patch_size 3'),
                                     (dict(depth=0), 'depth must be a positive integer')])
def test_ffonly_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg): ffonly.ffonly_fmnist(**kw)
