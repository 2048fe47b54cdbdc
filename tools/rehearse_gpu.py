#!/usr/bin/env python3
"""Rehearse the GPU run on this CPU: execute notebooks at the `smoke` preset with bfloat16 autocast forced on.

A GPU lease is short (15 minutes, machine start included), so a notebook that fails there for a reason a CPU run never
meets wastes it. The commonest such reason in this course is mixed precision: under CUDA the training loop, the
samplers and the self-supervised loop run in bfloat16 autocast (`enabled=... device.type == 'cuda'`), on a CPU they
do not, so a dtype bug (e.g. `running_mean.lerp_` given a bfloat16 batch mean) shows up only on the GPU. Here every
`torch.autocast(..., dtype=torch.bfloat16, ...)` of the course is entered enabled, on the CPU; blocks that turn
autocast off on purpose (`torch.autocast(dev, enabled=False)`: float32 islands) are left as they are. CPU autocast's
op lists differ from CUDA's, so a clean rehearsal is no proof, but it catches dtype mismatches between parameters,
buffers and activations.

The notebooks are executed into a temporary folder (nothing here is changed), one process each, at the smoke preset
(the numbers are meaningless). Usage:

    python tools/rehearse_gpu.py [nbs/20_ddpm.ipynb ...]     # default: every numbered notebook
    make rehearse [NB=...]
"""
import argparse, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def force_bf16_autocast():
    "Make every `torch.autocast(..., dtype=torch.bfloat16)` enabled, on the CPU (returns the original class)."
    import torch
    original = torch.autocast

    class autocast(original):
        def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
            if dtype is torch.bfloat16: device_type, enabled = 'cpu', True
            super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    torch.autocast = autocast
    return original


def _one(nb: Path, out: Path) -> int:
    "Child process: patch torch, execute `nb` into `out`."
    force_bf16_autocast()
    sys.path.insert(0, str(ROOT / 'tools'))
    from run_nb import run_notebook
    try: run_notebook(nb, out)
    except SystemExit as e: return int(e.code or 0)
    return 0


def _last_error(text: str) -> str:
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith('Partly executed')]
    errs = [l for l in lines if 'Error' in l or 'Exception' in l]
    return (errs or lines or [''])[-1].strip()[:160]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('notebooks', nargs='*', type=Path)
    p.add_argument('--one', type=Path, help=argparse.SUPPRESS)
    p.add_argument('--out', type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one: return _one(a.one, a.out)
    nbs = a.notebooks or sorted((ROOT / 'nbs').glob('[0-9]*.ipynb'))
    env = {**os.environ, 'DL2021_PRESET': 'smoke', 'DL2021_PROGRESS': '0', 'MPLBACKEND': 'Agg'}
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for nb in nbs:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, __file__, '--one', str(nb.resolve()), '--out', str(Path(tmp) / nb.name)],
                               cwd=ROOT, env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            status = 'ok' if r.returncode == 0 else 'FAILED: ' + _last_error(r.stderr + r.stdout)
            print(f'{nb.name:28s} {dt:6.1f} s  {status}', flush=True)
            if r.returncode: failed.append((nb, r.stderr[-4000:]))
    for nb, err in failed: print(f'\n==== {nb.name}\n{err}')
    print(f'\n{len(nbs) - len(failed)} of {len(nbs)} notebooks ran with bfloat16 autocast forced on the CPU')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
