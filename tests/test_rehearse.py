"""tools/rehearse_gpu.py (`make rehearse`): bfloat16 autocast forced on the CPU finds the dtype bugs CUDA would."""
import json, subprocess, sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
from rehearse_gpu import force_bf16_autocast
from test_run_nb import _nb

# 50_batchnorm's bug on the GPU: a bf16 batch mean (under CUDA autocast) lerped into a float32 running mean
BUG = ('import torch\ncuda = torch.cuda.is_available()\nw, running_mean = torch.randn(4, 3), torch.zeros(3)\n'
       "with torch.autocast('cuda' if cuda else 'cpu', dtype=torch.bfloat16, enabled=cuda):\n"
       '    mean = (torch.randn(8, 4) @ w).mean(0)\n    running_mean.lerp_(mean, 0.1)')


def test_force_bf16_autocast():
    x = torch.randn(4, 4)
    original = force_bf16_autocast()
    try:
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=False): assert (x @ x).dtype == torch.bfloat16
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=True):
            with torch.autocast('cpu', enabled=False): assert (x @ x).dtype == torch.float32   # float32 islands stay
    finally: torch.autocast = original
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=False): assert (x @ x).dtype == torch.float32


def _rehearse(tmp_path, src):
    p = tmp_path / 'nb.ipynb'
    p.write_text(json.dumps(_nb([src])))
    before = p.read_text()
    r = subprocess.run([sys.executable, 'tools/rehearse_gpu.py', str(p)], cwd=ROOT, capture_output=True, text=True)
    assert p.read_text() == before                                   # executed into a temporary folder
    return r


def test_rehearsal_finds_the_bf16_bug(tmp_path):
    r = _rehearse(tmp_path, BUG)
    assert r.returncode == 1 and 'FAILED' in r.stdout and 'lerp' in r.stdout, r.stdout + r.stderr


def test_rehearsal_passes_the_fix(tmp_path):
    r = _rehearse(tmp_path, BUG.replace('lerp_(mean,', 'lerp_(mean.float(),'))
    assert r.returncode == 0 and '1 of 1 notebooks ran' in r.stdout, r.stdout + r.stderr
