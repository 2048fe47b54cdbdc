"""tools/run_course.py, the course runner behind `make course`: order, skip, deadline, jobs, failure, pack/unpack."""
import importlib.util, json, subprocess, sys, tarfile, time
from pathlib import Path
import pytest
from dl2021.provenance import check_notebook, read_provenance

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('run_course', ROOT / 'tools' / 'run_course.py')
rc = importlib.util.module_from_spec(spec); spec.loader.exec_module(rc)


def _nb(cells):
    return {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': f'c{i}', 'metadata': {}, 'outputs': [],
                       'source': src} for i, src in enumerate(cells)],
            'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}},
            'nbformat': 4, 'nbformat_minor': 5}


@pytest.fixture
def repo(tmp_path):
    "A stand-in repository: settings.ini (so provenance lands here) and nbs/."
    (tmp_path / 'settings.ini').write_text('[DEFAULT]\ngit_url = https://github.com/x/y\n')
    (tmp_path / 'nbs').mkdir()
    return tmp_path


def _write(repo, name, cells):
    p = repo / 'nbs' / name
    p.write_text(json.dumps(_nb(cells)))
    return p


def _course(*args):
    return subprocess.run([sys.executable, str(ROOT / 'tools' / 'run_course.py'), '--preset', 'cpu', *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_order_follows_dependencies():
    names = ['24_palette', '06_fid', '20_ddpm', '21_improved_ddpm', '10_mlp_mixer']
    got = [p.stem for p in rc.order([Path(f'nbs/{n}.ipynb') for n in names])]
    assert got.index('06_fid') < got.index('20_ddpm') < got.index('21_improved_ddpm')
    assert got.index('06_fid') < got.index('24_palette')


def test_run_writes_outputs_and_provenance_then_skips(repo):
    a = _write(repo, '01_a.ipynb', ['x = 6 * 7\nprint(x)', '#| gpu\nprint("gpu cells run too")'])
    r = _course(a)
    assert r.returncode == 0, r.stdout + r.stderr
    cells = json.loads(a.read_text())['cells']
    assert ''.join(cells[0]['outputs'][0]['text']).strip() == '42'
    assert 'gpu cells run too' in ''.join(cells[1]['outputs'][0]['text'])
    rec = read_provenance(a)
    assert rec['outputs'] == 'cpu' and rec['runs']['cpu']['device'].startswith('CPU')
    assert check_notebook(a)[0] == 'ok'
    assert '[01_a] cell 1/2' in r.stdout                                      # progress per cell
    r2 = _course(a)
    assert r2.returncode == 0 and 'skipped (up to date)' in r2.stdout
    r3 = _course(a, '--force')
    assert r3.returncode == 0 and 'skipped' not in r3.stdout.split('notebook')[-1]


def test_runs_record_models_loaded_from_the_cache(repo):
    "A run that loads trained models from the checkpoint cache says so: its wall time leaves out their training."
    nb = _write(repo, '09_c.ipynb', [f'print("demo: {rc.CACHE_HIT} (demo.pt)")', 'print("trained")'])
    assert _course(nb).returncode == 0
    assert read_provenance(nb)['runs']['cpu']['cached_models'] == 1
    import inspect, dl2021.train
    assert rc.CACHE_HIT in inspect.getsource(dl2021.train.cached)           # the message the runner looks for


def test_failure_leaves_notebook_untouched(repo):
    bad = _write(repo, '02_bad.ipynb', ['print(1)', 'raise RuntimeError("boom")'])
    before = bad.read_text()
    r = _course(bad)
    assert r.returncode == 1 and 'failed' in r.stdout and 'boom' in r.stdout
    assert bad.read_text() == before and check_notebook(bad)[0] == 'no outputs'
    rec = read_provenance(bad)                                                # only a note of the attempt
    assert rec['runs'] == {} and rec['attempts']['cpu']['status'] == 'failed' 


def test_deadline_starts_nothing_new_and_finishes_cleanly(repo):
    slow = _write(repo, '03_slow.ipynb', ['import time; time.sleep(3)', 'print("done")'])
    later = _write(repo, '04_later.ipynb', ['print("never")'])
    r = _course(slow, later, '--deadline', '1')
    assert r.returncode == 1
    assert 'not started (deadline)' in r.stdout
    assert check_notebook(slow)[0] == 'ok'                                    # the one in flight finished
    assert check_notebook(later)[0] == 'no outputs'


def test_budget_stops_the_run_and_still_packs(repo, tmp_path):
    "At the budget, notebooks in flight are stopped and left untouched; the finished ones are packed."
    quick = _write(repo, '05_quick.ipynb', ['print("quick")'])
    slow = _write(repo, '06_slow.ipynb', ['import time; time.sleep(60)', 'print("never")'])
    later = _write(repo, '07_later.ipynb', ['print("never")'])
    before = slow.read_text()
    t0 = time.perf_counter()
    r = _course(quick, slow, later, '--budget', '8', '--pack', tmp_path / 'out')
    assert time.perf_counter() - t0 < 45, 'the budget did not stop the run'
    assert r.returncode == 1
    assert 'stopped (budget)' in r.stdout and 'not started (budget)' in r.stdout
    assert check_notebook(quick)[0] == 'ok'
    assert slow.read_text() == before and check_notebook(slow)[0] == 'no outputs'
    att = read_provenance(slow)['attempts']['cpu']                          # how far it got, for sizing the next run
    assert att['status'] == 'stopped (budget)' and 2 < att['wall_s'] < 45
    assert not list(repo.glob('nbs/_*.part.ipynb'))
    names = tarfile.open(next((tmp_path / 'out').glob('*.tar.gz'))).getnames()
    assert 'nbs/05_quick.ipynb' in names and 'nbs/06_slow.ipynb' not in names and 'results/runs/06_slow.json' in names
    slow.write_text(json.dumps(_nb(['print("now quick")'])))                 # a run that finishes drops the note
    assert _course(slow).returncode == 0 and 'attempts' not in read_provenance(slow)


def test_unpack_keeps_runs_of_other_presets_made_here(repo, tmp_path):
    "A full run brought back from a GPU host keeps the record of a cpu run made here since the tree was copied."
    nb = _write(repo, '08_m.ipynb', ['print("m")'])
    assert _course(nb).returncode == 0
    runs = repo / 'results' / 'runs' / '08_m.json'
    remote = json.loads(runs.read_text())
    remote['runs']['full'] = {**remote['runs']['cpu'], 'preset': 'full', 'device': 'GPU'}
    remote['outputs'] = 'full'
    runs.write_text(json.dumps(remote))
    archives = rc.pack([nb, runs], tmp_path / 'out', root=repo)
    here = tmp_path / 'here'; (here / 'results' / 'runs').mkdir(parents=True); (here / 'nbs').mkdir()
    local = {**remote, 'outputs': 'cpu', 'runs': {'cpu': {**remote['runs']['cpu'], 'wall_s': 99.0}}}
    (here / 'results' / 'runs' / '08_m.json').write_text(json.dumps(local))
    rc.unpack(archives[0], root=here)
    got = json.loads((here / 'results' / 'runs' / '08_m.json').read_text())
    assert got['outputs'] == 'full' and got['runs']['full']['device'] == 'GPU'
    assert got['runs']['cpu']['wall_s'] == 99.0                                # the newer cpu run made here
    # an archive that brings only an attempt note (the run did not finish there) leaves the record as it is here
    remote['attempts'] = {'full': {'status': 'stopped (budget)', 'wall_s': 500.0}}
    runs.write_text(json.dumps(remote))
    archives = rc.pack([runs], tmp_path / 'out2', root=repo)
    rc.unpack(archives[0], root=here)
    got2 = json.loads((here / 'results' / 'runs' / '08_m.json').read_text())
    assert got2['outputs'] == 'full' and got2['runs'] == got['runs'] and got2['attempts']['full']['wall_s'] == 500.0


def test_git_rev_outside_git(tmp_path, monkeypatch):
    "A copy of the working tree on a GPU host (without .git, or on another commit's) records the revision it was copied from."
    import dl2021.results as res
    monkeypatch.setattr(res, 'repo_root', lambda: tmp_path)
    monkeypatch.setenv('GIT_CEILING_DIRECTORIES', str(tmp_path.parent))
    monkeypatch.delenv('DL2021_GIT_REV', raising=False)
    assert res.git_rev() == 'unknown'
    monkeypatch.setenv('DL2021_GIT_REV', 'abc1234')
    assert res.git_rev() == 'abc1234'
    monkeypatch.setattr(res, 'repo_root', lambda: ROOT)                     # inside git too: the variable wins
    assert res.git_rev() == 'abc1234'


def test_timeout_stops_one_notebook_and_the_run_goes_on(repo):
    slow = _write(repo, '10_slow.ipynb', ['import time; time.sleep(60)'])
    after = _write(repo, '11_after.ipynb', ['print("after")'])
    before = slow.read_text()
    r = _course(slow, after, '--timeout', '3')
    assert r.returncode == 1 and 'timeout' in r.stdout
    assert slow.read_text() == before and read_provenance(slow)['attempts']['cpu']['status'] == 'timeout'
    assert check_notebook(after)[0] == 'ok'


def test_jobs_run_notebooks_side_by_side(repo, tmp_path):
    log = tmp_path / 'log'
    nbs = [_write(repo, f'0{i}_job.ipynb', [f'import time\nopen({str(log)!r}, "a").write(f"{i} start {{time.time()}}\\n")\n'
                                             f'time.sleep(3)\nopen({str(log)!r}, "a").write(f"{i} end {{time.time()}}\\n")'])
           for i in (5, 6)]
    r = _course(*nbs, '--jobs', '2')
    assert r.returncode == 0, r.stdout
    t = {tuple(l.split()[:2]): float(l.split()[2]) for l in log.read_text().splitlines()}
    assert t[('6', 'start')] < t[('5', 'end')] and t[('5', 'start')] < t[('6', 'end')]      # the runs overlap
    assert read_provenance(nbs[0])['runs']['cpu']['jobs'] == 2          # recorded: they shared the machine


def test_pack_and_unpack_round_trip(repo, tmp_path, monkeypatch):
    nb = _write(repo, '07_p.ipynb', ['print("packed")'])
    (repo / 'results').mkdir()
    rec = repo / 'results' / 'demo-acc.cpu.json'
    rec.write_text(json.dumps({'notebook': '07_p.ipynb', 'ours': 1}))
    r = _course(nb, '--pack', tmp_path / 'out')
    assert r.returncode == 0, r.stdout + r.stderr
    archives = sorted((tmp_path / 'out').glob('*.tar.gz'))
    assert len(archives) == 1
    names = tarfile.open(archives[0]).getnames()
    assert {'MANIFEST.json', 'nbs/07_p.ipynb', 'results/runs/07_p.json', 'results/demo-acc.cpu.json'} <= set(names)
    other = tmp_path / 'checkout'; (other / 'nbs').mkdir(parents=True)
    written = rc.unpack(tmp_path / 'out', root=other)
    assert sorted(written) == sorted(n for n in names if n != 'MANIFEST.json')
    for n in written: assert (other / n).read_bytes() == (repo / n).read_bytes()


def test_pack_limits(repo, tmp_path, monkeypatch):
    files = []
    for i in range(5):
        f = repo / 'nbs' / f'1{i}_big.ipynb'; f.write_bytes(bytes(range(256)) * 4096); files.append(f)    # 1 MiB each
    monkeypatch.setattr(rc, 'PACK_LIMIT', int(2.5 * 2**20))
    archives = rc.pack(files, tmp_path / 'split', root=repo)
    assert len(archives) == 3 and all(a.stat().st_size <= rc.PACK_LIMIT for a in archives)
    monkeypatch.setattr(rc, 'PACK_FILES', 2)
    with pytest.raises(SystemExit, match='more than 2'): rc.pack(files, tmp_path / 'few', root=repo)
    monkeypatch.setattr(rc, 'PACK_LIMIT', 2**19)
    with pytest.raises(SystemExit, match='over the archive limit'): rc.pack(files, tmp_path / 'small', root=repo)


def test_unpack_refuses_other_paths(tmp_path):
    import io
    a = tmp_path / 'evil.tar.gz'
    with tarfile.open(a, 'w:gz') as tar:
        for name, data in (('MANIFEST.json', b'{"dl2021/core.py": "x"}'), ('dl2021/core.py', b'evil')):
            info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SystemExit, match='refusing'): rc.unpack(a, root=tmp_path)
    assert not (tmp_path / 'dl2021').exists()


def test_wheelhouse_keeps_what_the_runner_needs():
    "`make wheelhouse` leaves out what the GPU host's image has, never the executor's own packages."
    mk = (ROOT / 'Makefile').read_text()
    host_has = set(mk.split('GPU_HOST_HAS :=')[1].split('\n')[0].split())
    for needed in ('nbdev', 'execnb', 'fastcore', 'ghapi', 'ipython', 'traitlets'):
        assert needed not in host_has
    r = subprocess.run(['make', '-n', 'wheelhouse'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and 'cd .wheelhouse && rm -f' in r.stdout and 'jedi-*.whl' in r.stdout


def test_record_only_measures_without_touching_the_page(repo):
    "--record-only: a cpu run of a page that shows other outputs is recorded; the page and its outputs stay."
    nb = _write(repo, '03_r.ipynb', ['print(6 * 7)'])
    assert _course(nb).returncode == 0                                       # the page now shows cpu outputs
    r = _course(nb, '--record-only')                                         # its own preset: refused, nothing changes
    assert r.returncode == 1 and 'run it without --record-only' in r.stdout
    rec = read_provenance(nb)                                                # make the page look like a full run's
    rec['runs']['full'] = {**rec['runs'].pop('cpu'), 'preset': 'full', 'device': 'GPU'}
    rec['outputs'] = 'full'
    from dl2021.provenance import provenance_path
    provenance_path(nb).write_text(json.dumps(rec))
    page = nb.read_text()
    r = _course(nb, '--record-only')
    assert r.returncode == 0, r.stdout + r.stderr
    assert nb.read_text() == page                                            # outputs untouched
    rec = read_provenance(nb)
    assert rec['outputs'] == 'full' and rec['runs']['cpu']['page'] is False and rec['runs']['cpu']['wall_s'] >= 0
    assert check_notebook(nb)[0] == 'ok'                                     # the page still matches its full run
    assert 'skipped (up to date)' in _course(nb, '--record-only').stdout     # recorded for this code: skipped
