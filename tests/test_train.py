import pytest
import torch
from torch import nn
from dl2021.core import set_seed
from dl2021.data import fashion_mnist, Augment
from dl2021.train import fit, EMA, save_checkpoint, load_checkpoint, NonFiniteLoss, evaluate


def small_net():
    return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))


@pytest.fixture(scope='module')
def split():
    return fashion_mnist('train', n=600, device='cpu')


def _run(split, seed):
    set_seed(seed)
    return fit(small_net(), split.batches(64, shuffle=True, tfm=Augment(translate=1, flip=True, erase=0.3)),
               epochs=2, lr=3e-3, log=False).losses


def test_same_seed_same_losses(split):
    a, b = _run(split, 3), _run(split, 3)
    assert len(a) == 2 * (600 // 64)
    assert a == b
    assert a != _run(split, 4)


def test_checkpoint_round_trip(split, tmp_path):
    set_seed(0)
    m = small_net()
    opt = torch.optim.AdamW(m.parameters())
    fit(m, split.batches(100, shuffle=True), epochs=1, opt=opt, sched=None, log=False)
    p = save_checkpoint(tmp_path / 'ck' / 'm.pt', m, opt, epoch=1, note='x')
    assert not [f for f in p.parent.iterdir() if f.suffix == '.tmp']       # no temporary file left behind
    m2 = small_net(); opt2 = torch.optim.AdamW(m2.parameters())
    meta = load_checkpoint(p, m2, opt2)
    assert meta == {'epoch': 1, 'note': 'x'}
    m.eval(); m2.eval()
    with torch.no_grad(): assert torch.equal(m(split.x[:16]), m2(split.x[:16]))
    assert opt2.state_dict()['state'].keys() == opt.state_dict()['state'].keys()


def test_checkpoint_refuses_code(tmp_path):
    "weights_only loading: a pickle carrying an arbitrary object is refused."
    p = tmp_path / 'evil.pt'
    torch.save({'model': {}, 'opt': None, 'meta': {'f': print}}, p)
    with pytest.raises(Exception): load_checkpoint(p)


def test_nan_guard_fires_on_poisoned_batch():
    s = fashion_mnist('train', n=320, device='cpu')
    s.x[200] = float('nan')                                               # batch 6 of 10 (bs 32, no shuffle)
    with pytest.raises(NonFiniteLoss, match='step 6'):
        fit(small_net(), s.batches(32), epochs=1, log=False, check_every=3)


def test_ema_tracks_and_evaluates(split):
    set_seed(0)
    m = small_net(); ema = EMA(m, beta=0.9)
    h = fit(m, split.batches(100, shuffle=True), epochs=1, lr=3e-3, valid=split.batches(300), ema=ema, log=False)
    assert ema.n == len(split) // 100
    assert not torch.equal(ema.module[0].weight, m[0].weight)
    assert h.last['valid_acc'] == pytest.approx(evaluate(ema.module, split.batches(300))['acc'])


_TRAIN_ONCE = r'''
import sys, time, torch
from torch import nn
from dl2021.train import cached
def train(m):
    print('TRAINING', flush=True); time.sleep(1.5)
    with torch.no_grad(): m.weight.fill_(float(sys.argv[1]))
    return {'train_s': 1.5}
meta = cached('shared', {'k': 1}, nn.Linear(2, 2), train)
print('CACHED' if meta['cached'] else 'TRAINED', flush=True)
'''


def test_cache_entry_is_trained_once_by_concurrent_processes(tmp_path):
    "Two processes that need the same cache entry at once: one trains it, the other waits for the lock and loads it."
    import os, subprocess, sys
    env = {**os.environ, 'DL2021_CHECKPOINTS': str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, '-c', _TRAIN_ONCE, str(v)], env=env, stdout=subprocess.PIPE, text=True)
             for v in (1, 2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(o.count('TRAINING') for o in outs) == 1, outs
    assert sorted(o.strip().splitlines()[-1] for o in outs) == ['CACHED', 'TRAINED'], outs
    assert not list(tmp_path.glob('*.lock'))


def test_lock_that_holds_no_pid_times_out_then_is_taken_over_when_old(tmp_path):
    "A lock file without a pid (being written, or garbage) is waited on like a live one, and taken over once old."
    import os, time
    from dl2021.train import training_lock
    entry = tmp_path / 'm-0.pt'
    lock = tmp_path / 'm-0.pt.lock'
    lock.write_text('not a pid')
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match='delete the file'):
        with training_lock(entry, timeout=0.2, poll=0.05): pass
    assert time.monotonic() - t0 < 5                       # it slept and timed out; no busy loop that never ends
    old = time.time() - 120; os.utime(lock, (old, old))
    with training_lock(entry, timeout=0.2, poll=0.05): assert lock.read_text() == str(os.getpid())
    assert not lock.exists()


def test_reloading_what_this_process_trained_is_not_a_cache_hit(tmp_path, monkeypatch, capsys):
    """The runner counts 'loaded from the checkpoint cache' as training saved; a model trained moments ago in the same
    process and loaded again saved nothing, and says so."""
    from dl2021.train import cached
    monkeypatch.setenv('DL2021_CHECKPOINTS', str(tmp_path))
    assert not cached('again', {'k': 2}, nn.Linear(2, 2), lambda m: {'train_s': 0.})['cached']
    assert cached('again', {'k': 2}, nn.Linear(2, 2), lambda m: {'train_s': 0.})['cached']
    out = capsys.readouterr().out
    assert 'loaded again' in out and 'loaded from the checkpoint cache' not in out
