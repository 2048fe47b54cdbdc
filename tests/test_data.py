import gzip, hashlib, http.server, os, shutil, threading
from functools import partial
from pathlib import Path
import pytest
import torch
from dl2021 import data
from dl2021.data import (ChecksumError, DataMissingError, fashion_mnist, find_fashion_mnist, load_fashion_mnist,
                         read_idx, Augment, DeviceBatches)

NAMES = [n for pair in data.FMNIST_FILES.values() for n in pair]


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    "No data anywhere: empty $DL2021_DATA and cache, no system folder."
    monkeypatch.setenv('DL2021_DATA', str(tmp_path / 'empty'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.setattr(data, 'FMNIST_SYSTEM_DIRS', [])
    return tmp_path


def test_shapes_and_dtypes():
    x, y = load_fashion_mnist('train')
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64 and set(y.unique().tolist()) == set(range(10))
    xt, yt = load_fashion_mnist('test')
    assert xt.shape == (10000, 28, 28) and yt.bincount().tolist() == [1000] * 10
    s = fashion_mnist('test', device='cpu', n=100, scale='symmetric', pad=2)
    assert s.x.shape == (100, 1, 32, 32) and s.x.dtype == torch.float32 and s.x.min() >= -1 and s.x.max() <= 1
    assert s.x[:, :, :2].eq(-1).all()                                     # padding is background


def test_search_order_env_var_first(nowhere, monkeypatch):
    src = Path('/usr/share/datasets/fashion-mnist')
    if not src.exists(): pytest.skip('system copy missing')
    d = nowhere / 'mine'; shutil.copytree(src, d)
    monkeypatch.setenv('DL2021_DATA', str(d))
    assert find_fashion_mnist(download=False) == d


def test_missing_offline_gives_both_fixes(nowhere):
    with pytest.raises(DataMissingError) as e:
        find_fashion_mnist(download=True, urls=['http://127.0.0.1:9/'])     # nothing listens on port 9
    msg = str(e.value)
    assert 'apt-get install dataset-fashion-mnist' in msg and 'DL2021_DATA' in msg and 'Download failed' in msg


def test_corrupt_file_raises_checksum_error(tmp_path):
    src = Path(find_fashion_mnist(download=False))
    raw = bytearray(gzip.decompress((src / 't10k-labels-idx1-ubyte.gz').read_bytes()))
    raw[100] ^= 1                                                          # one flipped bit
    bad = tmp_path / 't10k-labels-idx1-ubyte.gz'
    bad.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ChecksumError): read_idx(bad)
    trunc = tmp_path / 'train-labels-idx1-ubyte.gz'
    trunc.write_bytes((src / 'train-labels-idx1-ubyte.gz').read_bytes()[:1000])
    with pytest.raises(ChecksumError): read_idx(trunc)


def _serve(folder):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    handler.log_message = lambda *a: None
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_download_checks_md5_and_is_atomic(nowhere, monkeypatch):
    "A mirror serving archives whose MD5 is not the published one is refused; a matching one is used."
    src = Path('/usr/share/datasets/fashion-mnist')
    if not src.exists(): pytest.skip('no local copy to serve')
    srv = _serve(src)
    url = f'http://127.0.0.1:{srv.server_address[1]}/'
    try:
        with pytest.raises(ChecksumError): find_fashion_mnist(download=True, urls=[url])   # Debian recompressed them
        assert not list((nowhere / 'cache').rglob('*.gz'))                                # nothing half-written
        served = {n: hashlib.md5((src / f'{n}.gz').read_bytes()).hexdigest() for n in NAMES}
        monkeypatch.setattr(data, 'FMNIST_GZ_MD5', served)
        d = find_fashion_mnist(download=True, urls=[url])
        assert d == nowhere / 'cache' / 'dl2021' / 'fashion-mnist'
        assert read_idx(d / 't10k-labels-idx1-ubyte.gz').shape == (10000,)
    finally:
        srv.shutdown()


def test_batches_and_augment():
    torch.manual_seed(0)
    x = torch.randn(10, 1, 8, 8); y = torch.arange(10)
    dl = DeviceBatches(x, y, bs=4, shuffle=True, drop_last=False, seed=1)
    got = torch.cat([b[1] for b in dl])
    assert sorted(got.tolist()) == list(range(10)) and len(dl) == 3
    assert torch.equal(torch.cat([b[1] for b in DeviceBatches(x, y, bs=4, shuffle=True, seed=1)]),
                       torch.cat([b[1] for b in DeviceBatches(x, y, bs=4, shuffle=True, seed=1)]))
    out = Augment(translate=2, flip=True, erase=0.5)(x)
    assert out.shape == x.shape
