#!/usr/bin/env python3
"""The course runner behind `make course`: execute many notebooks, write their outputs and provenance back.

    tools/run_course.py [NB ...] [--preset cpu|full] [--jobs N] [--deadline S] [--budget S] [--timeout S] [--force]
                        [--pack DIR]
    tools/run_course.py --unpack DIR            # apply archives written by --pack to this checkout

- Notebooks run in dependency order (06_fid before the generative notebooks, a chapter before its comparison page),
  each in its own process (`tools/run_nb.py`), `--jobs` at a time; each finished notebook is written back at once,
  with its provenance record (`results/runs/<nb>.json`), so a timeout loses only the notebooks in flight.
- A notebook whose committed outputs already come from the same preset and the same code is skipped (`--force` runs
  it anyway).
- `--deadline S`: no notebook starts after S seconds from the first start (after the up-to-date checks); those in flight finish (or hit `--timeout`).
- `--budget S`: the whole run stops S seconds after the first start: notebooks still in flight are stopped (and left
  untouched), then the table, the report and the archives are written as usual. On a host with a hard command time
  limit, a budget under that limit makes sure the finished notebooks come back.
- `--pack DIR`: writes the executed notebooks, their result records and provenance into at most 8 archives of at
  most 15 MiB each: how a GPU host with no internet and a command time limit sends a run back (`--unpack` here).
- Prints progress per cell of every notebook, and a table at the end: notebook, preset, device, wall time, status.
Exit status: 0 if every notebook asked for ran or was skipped, 1 otherwise.
"""
import argparse, hashlib, io, json, os, re, shutil, subprocess, sys, tarfile, tempfile, threading, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PACK_LIMIT = 15 * 2**20          # bytes per archive
PACK_FILES = 8                   # archives at most

# Which notebooks must run before which (their outputs or cached models are read by the later ones). 21 and 22 also
# use 20's model, but they train their own models first and the checkpoint cache makes them wait for one that another
# notebook is training (`dl2021.train.training_lock`), so they start beside 20 instead of after it.
DEPS = {
    '20_ddpm': ['06_fid'], '21_improved_ddpm': ['06_fid'], '22_guidance': ['06_fid'],
    '23_sr3': ['06_fid'], '24_palette': ['06_fid'],
    '16_mixers_compared': ['05_resnet', '10_mlp_mixer', '11_resmlp', '12_gmlp', '13_ff_only', '14_repmlp',
                           '15_convmixer'],
    '31_ssl_baselines': ['30_ssl'], '32_byol': ['30_ssl'], '33_simsiam': ['30_ssl'],
    '34_directpred': ['30_ssl', '31_ssl_baselines', '32_byol'],   # loads their random-init and BYOL models from the cache
    '35_dino': ['30_ssl'],
    '36_ssl_compared': ['30_ssl', '31_ssl_baselines', '32_byol', '33_simsiam', '34_directpred', '35_dino'],
    '40_clip': ['05_resnet'], '51_distillation': ['05_resnet'],
}


def all_notebooks():
    return sorted(p for p in (ROOT / 'nbs').glob('[0-9]*.ipynb'))


def order(nbs):
    "`nbs` sorted so that every notebook comes after those it depends on (among `nbs`), otherwise by number."
    names = {p.stem: p for p in nbs}
    done, out = set(), []
    def visit(n, stack=()):
        if n in done or n not in names: return
        if n in stack: raise SystemExit(f'dependency cycle: {" -> ".join(stack + (n,))}')
        for d in DEPS.get(n, []): visit(d, stack + (n,))
        done.add(n); out.append(names[n])
    for n in sorted(names): visit(n)
    return out


def default_preset():
    from dl2021.presets import preset_name
    os.environ.pop('IN_TEST', None)
    return preset_name()


def up_to_date(nb: Path, preset: str) -> bool:
    from dl2021.provenance import read_provenance, code_hash, output_hashes
    rec = read_provenance(nb)
    if not rec or rec.get('outputs') != preset: return False
    run = rec['runs'][preset]
    return run['code_hash'] == code_hash(nb) and run.get('output_hashes') == output_hashes(nb)


def recorded(nb: Path, preset: str) -> bool:
    "Is a `preset` run of `nb`'s present code in its provenance record (whether or not the page shows its outputs)?"
    from dl2021.provenance import read_provenance, code_hash
    run = ((read_provenance(nb) or {}).get('runs') or {}).get(preset)
    return bool(run) and run['code_hash'] == code_hash(nb)


def record_attempt(nb: Path, preset: str, status: str, wall: float, device: str, jobs: int):
    """Note in `nb`'s provenance record that its run at `preset` did not finish (stopped at the budget, timed out or
    failed): the notebook's outputs are untouched, but how far the run got is what sizes the next one. A later run that
    finishes at this preset removes the note."""
    import datetime
    from dl2021.provenance import read_provenance, provenance_path
    from dl2021.results import git_rev
    rec = read_provenance(nb) or {'notebook': nb.name, 'runs': {}}
    rec.setdefault('attempts', {})[preset] = dict(status=status, wall_s=round(wall, 1), device=device, jobs=jobs,
                                                  date=datetime.date.today().isoformat(), git_rev=git_rev())
    _write_record(provenance_path(nb), rec)


def _drop_attempt(nb: Path, preset: str):
    from dl2021.provenance import read_provenance, provenance_path
    rec = read_provenance(nb)
    if rec and preset in rec.get('attempts', {}):
        del rec['attempts'][preset]
        if not rec['attempts']: del rec['attempts']
        _write_record(provenance_path(nb), rec)


CACHE_HIT = 'loaded from the checkpoint cache'      # what `dl2021.train.cached` prints when it skips training


def cached_models(nb: Path) -> int:
    """How many models notebook `nb` loaded from the checkpoint cache instead of training them in this run (from its
    outputs): its wall time then leaves out their training, which an earlier run (often an earlier notebook) paid."""
    cells = json.loads(nb.read_text()).get('cells', [])
    return sum(''.join(o.get('text', '')).count(CACHE_HIT) for c in cells for o in c.get('outputs', []))


def _write_record(p: Path, rec: dict):
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix('.tmp'); tmp.write_text(json.dumps(rec, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')
    os.replace(tmp, p)


class Job:
    def __init__(self, nb, preset, threads, timeout, log, jobs=1, record_only=False):
        self.nb, self.preset, self.timeout, self.log, self.jobs = nb, preset, timeout, log, jobs
        self.report = Path(tempfile.mkstemp(suffix='.json')[1])
        # --record-only: the executed copy goes to a temporary folder; the page is left as it is
        self.out = Path(tempfile.mkdtemp()) / nb.name if record_only else None
        env = {**os.environ, 'DL2021_PRESET': preset, 'DL2021_PROGRESS': '0', 'MPLBACKEND': 'Agg',
               'PYTHONUNBUFFERED': '1'}
        env.pop('IN_TEST', None)
        if threads: env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = str(threads)
        self.t0 = time.perf_counter()
        cmd = [sys.executable, str(ROOT / 'tools' / 'run_nb.py'), str(nb), '--progress', '--report', str(self.report)]
        if self.out: cmd += ['--out', str(self.out)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.tail = []
        self.reader = threading.Thread(target=self._read, daemon=True); self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip('\n')
            self.tail = (self.tail + [line])[-40:]
            if line.startswith(f'[{self.nb.stem}]') or 'Error' in line or 'error' in line:
                self.log(line)

    def poll(self):
        "None while running; else (status, wall_s, device)."
        rc = self.proc.poll()
        wall = time.perf_counter() - self.t0
        if rc is None:
            if self.timeout and wall > self.timeout: return self.stop('timeout')
            return None
        return self._finish(rc, wall)

    def _drop_out(self):
        "Remove the --record-only copy's temporary folder, if any."
        if self.out: shutil.rmtree(self.out.parent, ignore_errors=True)

    def stop(self, status='stopped (budget)'):
        "Stop the notebook now (its timeout, or the run's budget): the notebook file is left untouched."
        self.proc.kill(); self.proc.wait(); self.reader.join(5)
        self._drop_out()
        return status, time.perf_counter() - self.t0, ''

    def _finish(self, rc, wall):
        self.reader.join(5)
        if rc != 0:
            self.log('\n'.join(f'    {l}' for l in self.tail[-25:]))
            self._drop_out()
            return 'failed', wall, ''
        rep = json.loads(self.report.read_text())
        from dl2021.provenance import write_provenance, read_provenance, provenance_path, output_hashes
        before = read_provenance(self.nb)
        write_provenance(self.nb, rep['preset'], rep['device'], rep['wall_s'], rep['torch'],
                         jobs=self.jobs,       # notebooks at a time: they share the machine
                         cached_models=cached_models(self.out or self.nb))
        if self.out:                          # the run is recorded, the page keeps the outputs it had
            rec = read_provenance(self.nb)
            rec['runs'][rep['preset']]['output_hashes'] = output_hashes(self.out)
            rec['runs'][rep['preset']]['page'] = False
            if before and before.get('outputs'): rec['outputs'] = before['outputs']
            else: rec.pop('outputs', None)
            _write_record(provenance_path(self.nb), rec)
            self._drop_out()
        _drop_attempt(self.nb, rep['preset'])
        return 'ok', rep['wall_s'], rep['device']


def run(nbs, preset, jobs=1, deadline=None, timeout=None, force=False, threads=None, budget=None, device='',
        record_only=False):
    """Execute `nbs` (already ordered); returns rows (notebook, preset, device, wall_s, status). A notebook that does
    not finish gets an attempt note in its provenance record (on `device`). With `record_only` the executed notebooks
    are thrown away: their result records and their runs in the provenance records are kept, the pages are left as
    they are (e.g. to measure the `cpu` preset of a page that shows `full` outputs)."""
    lock = threading.Lock()
    def log(msg):
        with lock: print(msg, flush=True)
    from dl2021.provenance import read_provenance
    pending, running, rows, finished = list(nbs), {}, {}, set()
    names = {p.stem for p in nbs}
    for nb in list(pending):
        if record_only and (read_provenance(nb) or {}).get('outputs') == preset:   # its run must stay the page's
            rows[nb.stem] = (nb, preset, '', 0., f'not run (the page shows {preset} outputs: run it without --record-only)')
            pending.remove(nb); finished.add(nb.stem); continue
        if not force and (recorded(nb, preset) if record_only else up_to_date(nb, preset)):
            rows[nb.stem] = (nb, preset, '', 0., 'skipped (up to date)'); pending.remove(nb); finished.add(nb.stem)
    t_start = time.perf_counter()                         # the deadline counts from here, once the skips are known
    while pending or running:
        for nb, job in list(running.items()):
            res = job.poll()
            if res is None: continue
            status, wall, dev = res
            if status != 'ok': record_attempt(nb, preset, status, wall, device, jobs)
            del running[nb]; finished.add(nb.stem)
            rows[nb.stem] = (nb, preset, dev, wall, status)
            log(f'== {nb.name}: {status} in {wall:.0f} s' + (f' on {dev}' if dev else ''))
        elapsed = time.perf_counter() - t_start
        if budget is not None and elapsed > budget:
            for nb, job in list(running.items()):
                res = job.poll() or job.stop()                    # one that just finished still counts
                if res[0] != 'ok': record_attempt(nb, preset, res[0], res[1], device, jobs)
                del running[nb]; finished.add(nb.stem); rows[nb.stem] = (nb, preset, res[2], res[1], res[0])
                log(f'== {nb.name}: {res[0]} after {res[1]:.0f} s')
            for nb in pending: rows[nb.stem] = (nb, preset, '', 0., 'not started (budget)')
            pending = []
            break
        past = deadline is not None and elapsed > deadline
        while pending and len(running) < jobs and not past:
            ready = [nb for nb in pending if all(d in finished or d not in names for d in DEPS.get(nb.stem, []))]
            if not ready: break
            nb = ready[0]; pending.remove(nb)
            failed_dep = [d for d in DEPS.get(nb.stem, []) if d in rows and rows[d][4] not in ('ok',) and
                          not rows[d][4].startswith('skipped')]
            if failed_dep:
                rows[nb.stem] = (nb, preset, '', 0., f'not run ({", ".join(failed_dep)} failed)'); finished.add(nb.stem)
                continue
            log(f'== {nb.name}: starting at the {preset} preset ({time.perf_counter() - t_start:.0f} s into the run)')
            running[nb] = Job(nb, preset, threads, timeout, log, jobs, record_only)
        if past and pending:
            for nb in pending: rows[nb.stem] = (nb, preset, '', 0., 'not started (deadline)')
            pending = []
        time.sleep(0.2)
    return [rows[p.stem] for p in nbs]


def table(rows) -> str:
    w = max([len(r[0].name) for r in rows] + [8])
    out = [f"{'notebook':<{w}}  {'preset':<6}  {'device':<38}  {'wall':>8}  status"]
    for nb, preset, dev, wall, status in rows:
        out.append(f'{nb.name:<{w}}  {preset:<6}  {dev[:38]:<38}  {wall / 60:>6.1f} m  {status}')
    return '\n'.join(out)


# ---- packing a run to carry it back, and unpacking it here -------------------------------------------------------
def run_files(rows) -> list[Path]:
    "The files a run produced: executed notebooks, their provenance records and their result records."
    from dl2021.provenance import provenance_path
    files = []
    for nb, preset, dev, wall, status in rows:
        if status in ('stopped (budget)', 'timeout', 'failed'): files.append(provenance_path(nb))   # the attempt note
        if status != 'ok': continue
        files += [nb, provenance_path(nb)]
        for r in (nb.parent.parent / 'results').glob(f'*.{preset}.json'):
            try:
                if json.loads(r.read_text()).get('notebook') in (nb.name, nb.stem): files.append(r)
            except ValueError: pass
    return sorted(set(f for f in files if f.exists()))


def pack(files, dest: Path, prefix='dl2021-run', root: Path = ROOT) -> list[Path]:
    "Write `files` (paths under the repository `root`) into tar.gz archives of at most 15 MiB each, at most 8."
    dest.mkdir(parents=True, exist_ok=True)
    groups, cur, size = [], [], 0
    for f in sorted(files, key=lambda f: f.stat().st_size, reverse=True):
        n = f.stat().st_size
        if n > PACK_LIMIT - 2**16: raise SystemExit(f'{f.relative_to(root)} is {n / 2**20:.1f} MiB: over the archive limit')
        if cur and size + n > PACK_LIMIT - 2**16: groups.append(cur); cur, size = [], 0
        cur.append(f); size += n
    if cur: groups.append(cur)
    if len(groups) > PACK_FILES: raise SystemExit(f'{len(groups)} archives needed, more than {PACK_FILES}')
    out = []
    for i, g in enumerate(groups):
        path = dest / f'{prefix}-{i + 1}of{len(groups)}.tar.gz'
        manifest = {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in g}
        with tarfile.open(path, 'w:gz') as tar:
            blob = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo('MANIFEST.json'); info.size = len(blob); tar.addfile(info, io.BytesIO(blob))
            for f in g: tar.add(f, arcname=str(f.relative_to(root)))
        if path.stat().st_size > PACK_LIMIT: raise SystemExit(f'{path.name} is over 15 MiB')
        out.append(path)
    return out


ALLOWED = re.compile(r'^(nbs/[0-9][\w.-]*\.ipynb|results/[\w.-]+\.json|results/runs/[\w.-]+\.json)$')


def merge_provenance(local: Path, data: bytes, brings_notebook: bool) -> bytes:
    """A provenance record from an archive, merged with the one in this checkout. If the archive brings the notebook, its
    record says which run made the outputs it brings (`outputs`), and the runs (and attempt notes) of other presets made
    here since the archive's tree was copied (a newer `cpu` run, say) are kept. If it does not (a run that did not
    finish there), only its attempt notes are taken."""
    theirs, ours = json.loads(data), json.loads(local.read_text())
    if not brings_notebook:
        if theirs.get('attempts'): ours.setdefault('attempts', {}).update(theirs['attempts'])
        return (json.dumps(ours, indent=2, ensure_ascii=False) + '\n').encode()
    keep = theirs.get('outputs')
    for field in ('runs', 'attempts'):
        for preset, r in ours.get(field, {}).items():
            if preset != keep: theirs.setdefault(field, {})[preset] = r
    return (json.dumps(theirs, indent=2, ensure_ascii=False) + '\n').encode()


def unpack(src: Path, root: Path = ROOT) -> list[str]:
    "Apply the archives in folder `src` (or one archive) to the checkout at `root`; returns the files written."
    archives = sorted(src.glob('*.tar.gz')) if src.is_dir() else [src]
    if not archives: raise SystemExit(f'no .tar.gz archive in {src}')
    written, brought = [], set()
    for a in archives:                                    # which notebooks the archives bring, over all of them
        with tarfile.open(a, 'r:gz') as tar:
            brought |= {Path(n).stem for n in json.loads(tar.extractfile('MANIFEST.json').read()) if n.startswith('nbs/')}
    for a in archives:
        with tarfile.open(a, 'r:gz') as tar:
            manifest = json.loads(tar.extractfile('MANIFEST.json').read())
            for m in tar.getmembers():
                if m.name == 'MANIFEST.json': continue
                if not m.isfile() or not ALLOWED.match(m.name) or m.name not in manifest:
                    raise SystemExit(f'{a.name}: refusing {m.name!r} (not a notebook, result or provenance file)')
                data = tar.extractfile(m).read()
                if hashlib.sha256(data).hexdigest() != manifest[m.name]: raise SystemExit(f'{a.name}: {m.name} is corrupt')
                dest = root / m.name
                if m.name.startswith('results/runs/') and dest.exists():
                    data = merge_provenance(dest, data, Path(m.name).stem in brought)
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + '.part'); tmp.write_bytes(data); os.replace(tmp, dest)
                written.append(m.name)
    return written


def _report():
    "Regenerate results/README.md (the table of measured wall times) from the provenance records."
    subprocess.run([sys.executable, str(ROOT / 'tools' / 'course_report.py')], cwd=ROOT)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('notebooks', nargs='*', type=Path, help='notebooks to run (default: every numbered notebook)')
    p.add_argument('--preset', choices=['cpu', 'full'], help='default: full with CUDA, cpu without')
    p.add_argument('--jobs', type=int, default=1, help='notebooks at a time (default 1)')
    p.add_argument('--threads', type=int, help='torch threads per notebook (default: all cores / jobs)')
    p.add_argument('--deadline', type=float, help='seconds after which no notebook starts')
    p.add_argument('--budget', type=float, help='seconds after which the run stops: notebooks in flight are stopped, '
                   'the finished ones are reported and packed')
    p.add_argument('--timeout', type=float, help='seconds after which a notebook is stopped (left untouched)')
    p.add_argument('--force', action='store_true', help='run notebooks even if their outputs are up to date')
    p.add_argument('--record-only', action='store_true', help='execute into a temporary copy: write the result records '
                   'and the run into the provenance record, leave the page and its outputs as they are')
    p.add_argument('--pack', type=Path, help='write the run into archives in this folder (for make unpack)')
    p.add_argument('--unpack', type=Path, help='apply archives (a folder or one file) to this checkout, then stop')
    a = p.parse_args(argv)
    if a.unpack:
        files = unpack(a.unpack)
        print(f'unpacked {len(files)} files:\n  ' + '\n  '.join(files))
        _report()
        return 0
    preset = a.preset or default_preset()
    nbs = order([n.resolve() for n in a.notebooks] if a.notebooks else all_notebooks())
    missing = [str(n) for n in nbs if not n.exists()]
    if missing: p.error(f'no such notebook: {", ".join(missing)}')
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    import torch
    print(f'course runner: {len(nbs)} notebooks at the {preset} preset, {a.jobs} at a time, {threads} torch threads '
          f'each, torch {torch.__version__}' + (f', CUDA {torch.cuda.get_device_name()}' if torch.cuda.is_available() else ''),
          flush=True)
    t0 = time.perf_counter()
    from dl2021.core import device_name
    dev = device_name() if preset == 'full' or not threads else f'CPU ({os.cpu_count()} cores, {threads} torch threads)'
    rows = run(nbs, preset, a.jobs, a.deadline, a.timeout, a.force, threads, a.budget, dev, a.record_only)
    print('\n' + table(rows))
    print(f'total {time.perf_counter() - t0:.0f} s')
    if any(nb.parent == ROOT / 'nbs' for nb in nbs): _report()
    if a.pack:
        root = nbs[0].parent.parent if nbs else ROOT
        archives = pack(run_files(rows), a.pack, prefix=f'dl2021-{preset}', root=root)
        for ar in archives: print(f'packed {ar} ({ar.stat().st_size / 2**20:.1f} MiB)')
    bad = [r for r in rows if r[4] != 'ok' and not r[4].startswith('skipped')]
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
