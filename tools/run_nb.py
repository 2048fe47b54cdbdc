#!/usr/bin/env python3
"""Execute notebooks top to bottom (including `gpu` and `slow` cells) and write their outputs back into them.

This is what `make gpu NB=nbs/xx.ipynb` runs on a GPU host. The preset is chosen as everywhere in the course (`full`
when CUDA is present, else `smoke`; `DL2021_PRESET` overrides). Cells marked `#| eval: false` are skipped, as in nbdev.
On an error the notebook is left untouched, the partly executed copy is written to `_failed/<name>.ipynb` beside it (a folder nbdev skips),
and the exit status is 1. Outputs are cleaned the nbdev way (`nbdev_clean`), so the result can be committed as is.
"""
import argparse, os, sys, time
from pathlib import Path


def _directives(source: str) -> dict:
    "nbdev-style `#| key: value` lines at the top of a cell."
    out = {}
    for line in source.splitlines():
        s = line.strip()
        if not s: continue
        if not s.startswith('#|'): break
        key, _, val = s[2:].strip().partition(':')
        out[key.strip()] = val.strip()
    return out


def run_notebook(path: Path, dest: Path | None = None) -> float:
    "Execute `path`, writing it (with outputs) to `dest` (default: in place). Returns the wall time in seconds."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    path = path.resolve()
    dest = (dest or path).resolve()
    nb = read_nb(path)
    for c in nb.cells:
        if c.cell_type == 'code': c.outputs, c.execution_count = [], None
    skip = lambda c: c.cell_type != 'code' or _directives(c.source).get('eval', '').lower() == 'false'
    shell = CaptureShell(path)
    shell.set_path(path.parent)
    t0, cwd = time.perf_counter(), os.getcwd()
    os.chdir(path.parent)
    try:
        shell.run_all(nb, exc_stop=False, preproc=skip)
    finally:
        os.chdir(cwd)
    wall = time.perf_counter() - t0
    if shell.exc:
        failed = path.parent / '_failed' / path.name
        failed.parent.mkdir(exist_ok=True)
        write_nb(nb, failed)
        sys.stderr.write(shell.prettytb(fname=path) + f'\nPartly executed notebook written to {failed}\n')
        raise SystemExit(1)
    write_nb(nb, dest)
    try:
        from nbdev.clean import nbdev_clean
        nbdev_clean.__wrapped__(fname=str(dest))
    except ImportError:
        print('nbdev is not installed here: run `nbdev_clean` before committing', file=sys.stderr)
    return wall


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('notebooks', nargs='+', type=Path)
    p.add_argument('--out', type=Path, help='write the executed notebook here instead of in place (one notebook only)')
    a = p.parse_args()
    if a.out and len(a.notebooks) > 1: p.error('--out takes one notebook')
    os.environ.setdefault('DL2021_PROGRESS', '0')        # no progress widgets in saved outputs
    import torch
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU (the smoke preset will run)'
    print(f'executing on {dev}, torch {torch.__version__}', flush=True)
    for nb in a.notebooks:
        wall = run_notebook(nb, a.out)
        print(f'{nb}: executed in {wall:.1f} s, outputs written to {a.out or nb}', flush=True)


if __name__ == '__main__':
    main()
