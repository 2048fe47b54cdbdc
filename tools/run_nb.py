#!/usr/bin/env python3
"""Execute notebooks top to bottom (including `gpu` and `slow` cells) and write their outputs back into them.

The course runner (`tools/run_course.py`, `make course`) calls this once per notebook, in a fresh process. The preset
is chosen as everywhere in the course (`DL2021_PRESET`, else `full` with CUDA and `cpu` without). Cells marked
`#| eval: false` are skipped, as in nbdev. On an error the notebook is left untouched, the partly executed copy is
written to `_failed/<name>.ipynb` beside it (a folder nbdev skips), and the exit status is 1. Outputs are cleaned the
nbdev way (`nbdev_clean`), so the result can be committed as is (with the provenance record the runner writes).
With `--progress`, a line per cell says which cell runs and how long the notebook has been running.
"""
import argparse, json, os, sys, time
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


def _first_line(src: str) -> str:
    for line in src.splitlines():
        line = line.strip()
        if line and not line.startswith('#|'): return line[:60]
    return ''


def _keep_printed(shell):
    """execnb drops everything a cell prints when the cell ends in `;` (Jupyter only hides the cell's value): run such
    a cell with a `pass` after it, which hides the value as `;` does in Jupyter and keeps what the cell printed."""
    run = shell._run
    def _run(raw_cell, *args, **kwargs):
        if raw_cell.rstrip().endswith(';'): raw_cell = raw_cell.rstrip() + '\npass'
        return run(raw_cell, *args, **kwargs)
    shell._run = _run


def run_notebook(path: Path, dest: Path | None = None, progress: bool = False) -> float:
    "Execute `path`, writing it (with outputs) to `dest` (default: in place). Returns the wall time in seconds."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    path = path.resolve()
    dest = (dest or path).resolve()
    nb = read_nb(path)
    for c in nb.cells:
        if c.cell_type == 'code': c.outputs, c.execution_count = [], None
    code = [c for c in nb.cells if c.cell_type == 'code']
    t0 = time.perf_counter()

    def skip(c):
        if c.cell_type != 'code': return True
        if _directives(c.source).get('eval', '').lower() == 'false': return True
        if progress:
            print(f'[{path.stem}] cell {code.index(c) + 1}/{len(code)} at {time.perf_counter() - t0:.0f} s: '
                  f'{_first_line(c.source)}', flush=True)
        return False

    shell = CaptureShell(path)
    _keep_printed(shell)
    shell.set_path(path.parent)
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        shell.run_all(nb, exc_stop=True, preproc=skip)
    except BaseException: pass                         # shell.exc holds it; reported below
    finally:
        os.chdir(cwd)
    wall = time.perf_counter() - t0
    if shell.exc:
        failed = path.parent / '_failed' / path.name
        failed.parent.mkdir(exist_ok=True)
        write_nb(nb, failed)
        sys.stderr.write(shell.prettytb(fname=path) + f'\nPartly executed notebook written to {failed}\n')
        raise SystemExit(1)
    part = dest.with_name(f'_{dest.stem}.part.ipynb')  # written whole, then renamed: a run stopped meanwhile leaves
    write_nb(nb, part)                                 # the notebook as it was
    try:
        from nbdev.clean import nbdev_clean
        nbdev_clean.__wrapped__(fname=str(part))
    except ImportError:
        print('nbdev is not installed here: run `nbdev_clean` before committing', file=sys.stderr)
    os.replace(part, dest)
    return wall


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('notebooks', nargs='+', type=Path)
    p.add_argument('--out', type=Path, help='write the executed notebook here instead of in place (one notebook only)')
    p.add_argument('--progress', action='store_true', help='print a line as each cell starts')
    p.add_argument('--report', type=Path, help='write {wall_s, device, torch} of the run as JSON here (one notebook only)')
    a = p.parse_args()
    if (a.out or a.report) and len(a.notebooks) > 1: p.error('--out and --report take one notebook')
    os.environ.setdefault('DL2021_PROGRESS', '0')        # no progress widgets in saved outputs
    os.environ.setdefault('MPLBACKEND', 'Agg')
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dl2021.core import device_name
    from dl2021.presets import preset_name
    dev = device_name()
    print(f'executing at the {preset_name()} preset on {dev}, torch {torch.__version__}', flush=True)
    for nb in a.notebooks:
        wall = run_notebook(nb, a.out, a.progress)
        print(f'{nb}: executed in {wall:.1f} s, outputs written to {a.out or nb}', flush=True)
        if a.report:
            a.report.write_text(json.dumps(dict(wall_s=wall, device=dev, torch=torch.__version__, preset=preset_name())))


if __name__ == '__main__':
    main()
