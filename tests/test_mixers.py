"Tests for the patch-mixing architectures: MLP-Mixer, ResMLP, gMLP and the feed-forward-only ViT."
import pytest
import torch

from dl2021.core import n_params


def _count(make, **kw) -> int:
    "Parameter count of `make(**kw)` built on the meta device (shapes only: fast, no memory)."
    with torch.device('meta'): return n_params(make(**kw))


# ---------------------------------------------------------------- MLP-Mixer (2105.01601)
from dl2021.mixer import (MLPMixer, mixer_s16, mixer_b16, mixer_fmnist, mixer_param_count, PatchEmbed, MLP,
                          permute_patches, permute_token_weights, token_mixing_weights)


def test_mixer_paper_param_counts():
    # Table 1 of the paper: Mixer-S/16 18M, Mixer-B/16 59M (224 px, 1000 classes; the paper truncates)
    s, b = _count(mixer_s16), _count(mixer_b16)
    assert s // 10**6 == 18 and b // 10**6 == 59
    assert s == 18_528_264 and b == 59_880_472          # = timm's mixer_s16_224 (18.5M) and mixer_b16_224 (59.9M)
    assert s == mixer_param_count(dim=512, depth=8, token_dim=256, channel_dim=2048)


def test_mixer_token_and_channel_widths_not_swapped():
    # A popular port gave the token MLP D_C and the channel MLP D_S: the count would drop to ~9.5M / ~23M.
    m = mixer_s16()
    blk = m.blocks[0]
    assert blk.token_mlp.fc1.in_features == 196 and blk.token_mlp.fc1.out_features == 256      # S -> D_S
    assert blk.channel_mlp.fc1.in_features == 512 and blk.channel_mlp.fc1.out_features == 2048  # C -> D_C
    assert _count(mixer_s16, token_dim=2048, channel_dim=256) // 10**6 != 18
    assert _count(mixer_b16, token_dim=3072, channel_dim=384) // 10**6 != 59


def test_mixer_shapes_and_api():
    m = mixer_fmnist(depth=2)
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert m.features(torch.randn(3, 1, 28, 28)).shape == (3, 128)
    assert PatchEmbed(28, 7, 1, 8)(torch.randn(2, 1, 28, 28)).shape == (2, 16, 8)
    assert MLP(5, 7)(torch.randn(2, 3, 5)).shape == (2, 3, 5)
    assert token_mixing_weights(m).shape == (2, 64, 7, 7)
    m = MLPMixer(img_size=32, patch_size=8, in_chans=3, num_classes=5, dim=16, depth=1, token_dim=8, channel_dim=32)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_mixer_no_positional_encoding_permutation_equivariant():
    torch.manual_seed(0)
    perm = torch.randperm(49)
    x = torch.randn(4, 1, 28, 28)
    xp = permute_patches(x, perm, 4)
    assert torch.equal(permute_patches(xp, perm.argsort(), 4), x)
    m = mixer_fmnist(depth=2)
    torch.nn.init.normal_(m.head.weight)
    y = m(x)
    assert not torch.allclose(m(xp), y, atol=1e-3)                  # the same weights do see the order...
    assert torch.allclose(permute_token_weights(m, perm)(xp), y, atol=1e-4)   # ...but permuted weights undo it
    assert not any('pos' in n for n, _ in m.named_parameters())


# ---------------------------------------------------------------- ResMLP (2105.03404)
resmlp = pytest.importorskip('dl2021.resmlp')


def test_resmlp_s12_params():
    # ResMLP-S12: 15M parameters (Table 1 / facebookresearch/deit README_resmlp.md); timm resmlp_12_224 15.35M
    n = _count(resmlp.resmlp_s12)
    assert round(n / 1e6) == 15 and n == 15_350_872


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


# ---------------------------------------------------------------- gMLP (2105.08050)
gmlp = pytest.importorskip('dl2021.gmlp')


def test_gmlp_ti_params():
    # gMLP-Ti (Table 1): L=30, d_model=128, d_ffn=768, 6M parameters (timm gmlp_ti16_224: 5.87M)
    n = _count(gmlp.gmlp_ti)
    assert round(n / 1e6) == 6 and n == 5_867_328


def test_gmlp_sgu_starts_as_identity_gate():
    torch.manual_seed(0)
    sgu = gmlp.SpatialGatingUnit(dim=16, num_patches=49)
    z = torch.randn(2, 49, 16)
    z1, _ = z.chunk(2, dim=-1)
    assert sgu(z).shape == (2, 49, 8)
    assert torch.allclose(sgu(z), z1, atol=1e-3)            # W ~ 0, b = 1: s(Z) = Z1 * 1
    torch.nn.init.normal_(sgu.proj.weight)
    assert not torch.allclose(sgu(z), z1, atol=1e-1)
    m = gmlp.gmlp_fmnist(depth=2)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# ---------------------------------------------------------------- FF-only ViT (2105.02723)
ffonly = pytest.importorskip('dl2021.ffonly')


def test_ffonly_params():
    # lukemelas/do-you-even-need-attention README: FF-tiny 7.7M, FF-base 62M, FF-large 206M
    assert round(_count(ffonly.ffonly_tiny) / 1e5) == 77
    assert round(_count(ffonly.ffonly_base) / 1e6) == 62
    assert round(_count(ffonly.ffonly_large) / 1e6) == 206


def test_ffonly_shapes():
    m = ffonly.ffonly_fmnist(depth=2)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert any('pos' in n for n, _ in m.named_parameters())       # unlike the Mixer, it has a position embedding
