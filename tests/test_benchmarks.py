"The speed-run tools of 16_mixers_compared: translations, test-time augmentation, the recipe's guard, throughput."
import pytest, torch
from torch import nn
from dl2021.data import fashion_mnist, random_translate
from dl2021.convmixer import convmixer_fmnist
from dl2021.benchmarks import translate, tta_logits, tta_accuracy, speedrun, train_throughput, SPEEDRUN_DEFAULTS


def test_translate_moves_content_and_replicates_edges():
    x = torch.zeros(1, 1, 7, 7); x[0, 0, 3, 3] = 1.; x[0, 0, :, 0] = 2.
    t = translate(x, 1, 2)
    assert t[0, 0, 4, 5] == 1 and (t[0, 0, :, :3] == 2).all()
    assert torch.equal(translate(x, 0, 0), x)
    assert torch.equal(translate(translate(x, 0, 1), 0, -1)[..., :, 1:6], x[..., :, 1:6])
    # not a wrap-around roll: the right edge does not reappear on the left
    r = torch.zeros(1, 1, 5, 5); r[0, 0, :, 4] = 1.
    assert translate(r, 0, 1)[0, 0, :, 0].sum() == 0 and torch.roll(r, 1, -1)[0, 0, :, 0].sum() == 5


def test_translate_matches_the_training_augmentation():
    torch.manual_seed(0)
    x = torch.randn(300, 1, 9, 9)
    rt = random_translate(x, pad=2)
    views = [translate(x, dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    assert all(any(torch.equal(rt[i], v[i]) for v in views) for i in range(len(x)))


def test_tta_averages_logits():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(49, 3))
    x = torch.randn(4, 1, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(tta_logits(lin, x, flip=True), (lin(x) + lin(x.flip(-1))) / 2)
        views = [x, x.flip(-1)] + [translate(x, dy, dx) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        torch.testing.assert_close(tta_logits(lin, x, flip=True, shifts=1), torch.stack([lin(v) for v in views]).mean(0))
    y = lin(x).argmax(-1)
    assert tta_accuracy(lin, x, y, flip=False) == 1.0


def test_speedrun_refuses_unknown_settings_and_runs_tiny():
    tr, te = fashion_mnist('train', n=128, device='cpu'), fashion_mnist('test', n=64, device='cpu')
    with pytest.raises(ValueError, match='unknown speed-run settings'): speedrun(tr, te, epoch=2)
    r = speedrun(tr, te, model_kw=dict(dim=8, depth=1, kernel_size=3, patch_size=4), epochs=1, bs=32, warmup_steps=1)
    assert 0 <= r['acc'] <= 1 and r['train_s'] > 0 and r['recipe']['label_smoothing'] == SPEEDRUN_DEFAULTS['label_smoothing']


def test_train_throughput_positive():
    assert train_throughput(convmixer_fmnist(dim=8, depth=1), (1, 28, 28), bs=4, steps=2, warmup=1, device='cpu') > 0
