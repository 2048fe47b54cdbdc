#!/usr/bin/env python3
"""Execute notebooks top to bottom (including `gpu` and `slow` cells) and write their outputs back into them.

The course runner (`tools/run_course.py`, `make course`) calls this once per notebook, in a fresh process. The preset
is chosen as everywhere in the course (`DL2021_PRESET`, else `full` with CUDA and `cpu` without). Cells marked
`#| eval: false` are skipped, as in nbdev. On an error the notebook is left untouched, the partly executed copy is
written to `_failed/<name>.ipynb` beside it (a folder nbdev skips), and the exit status is 1. Outputs are cleaned the
nbdev way (`nbdev_clean`), so the result can be committed as is (with the provenance record the runner writes).
With `--progress`, a line per cell says which cell runs and how long the notebook has been running.
PNG outputs are re-encoded losslessly before writing (same pixels, smaller file: see `shrink_png`); `--shrink` does only
that, to notebooks already executed.
"""
import argparse, base64, io, json, os, sys, time
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


def shrink_png(data: bytes) -> bytes:
    """The smallest lossless encoding of the PNG `data`: fully opaque RGBA becomes RGB, ≤ 256 colours become a palette,
    and zlib is run with `optimize`. Pixels are checked to be identical; `data` itself is returned if nothing is smaller."""
    import numpy as np
    from PIL import Image
    im = Image.open(io.BytesIO(data)); im.load()
    px = np.asarray(im.convert('RGBA'))                                    # (H, W, 4): what a browser shows
    cands = []
    if (px[..., 3] == 255).all():
        rgb = px[..., :3]
        cands.append(Image.fromarray(rgb, 'RGB'))
        key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        colours, idx = np.unique(key, return_inverse=True)
        if len(colours) <= 256:
            pal = Image.fromarray(idx.reshape(key.shape).astype(np.uint8), 'P')
            pal.putpalette(np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], 1).astype(np.uint8).ravel().tolist())
            cands.append(pal)
    else: cands.append(im.convert('RGBA') if im.mode != 'RGBA' else im)
    best = data
    for c in cands:
        b = io.BytesIO(); c.save(b, 'PNG', optimize=True); new = b.getvalue()
        if len(new) < len(best) and np.array_equal(np.asarray(Image.open(io.BytesIO(new)).convert('RGBA')), px): best = new
    return best


def shrink_outputs(cells) -> int:
    "Re-encode every PNG output of `cells` (notebook JSON cells, changed in place) with `shrink_png`; returns bytes saved."
    saved = 0
    for c in cells:
        for o in c.get('outputs', []) or []:
            d = o.get('data') or {}
            if 'image/png' not in d: continue
            b64 = ''.join(d['image/png']) if isinstance(d['image/png'], list) else d['image/png']
            new = base64.b64encode(shrink_png(base64.b64decode(b64))).decode()
            if len(new) < len(b64): saved += len(b64) - len(new); d['image/png'] = new
    return saved


def shrink_notebook(path: Path) -> int:
    """Shrink the PNG outputs of the notebook file `path` in place (written whole, then renamed); returns bytes saved.
    If its outputs are those of the run its provenance record names, the record's output fingerprints are updated to
    the re-encoded outputs (the pixels were checked equal); outputs the record does not know are left unsigned."""
    from dl2021.provenance import read_provenance, provenance_path, output_hashes
    path = Path(path)
    nb = json.loads(path.read_text())
    rec = read_provenance(path)
    run = rec['runs'][rec['outputs']] if rec and rec.get('outputs') in rec.get('runs', {}) else None
    signed = run is not None and set(output_hashes(nb)) <= set(run.get('output_hashes', []))
    saved = shrink_outputs(nb['cells'])
    if saved:
        part = path.with_name(f'_{path.stem}.part.ipynb')
        part.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n'); os.replace(part, path)
        if signed:
            run['output_hashes'] = output_hashes(path)
            from run_course import _write_record
            _write_record(provenance_path(path), rec)
    return saved


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
    shrink_outputs(nb.cells)
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
    p.add_argument('--shrink', action='store_true', help='only re-encode the PNG outputs losslessly (no execution)')
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if a.shrink:
        for nb in a.notebooks: print(f'{nb}: {shrink_notebook(nb) / 1024:.0f} KiB of outputs saved', flush=True)
        return
    if (a.out or a.report) and len(a.notebooks) > 1: p.error('--out and --report take one notebook')
    os.environ.setdefault('DL2021_PROGRESS', '0')        # no progress widgets in saved outputs
    os.environ.setdefault('MPLBACKEND', 'Agg')
    import torch
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
