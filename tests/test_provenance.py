"""Every committed output comes from a recorded cpu or full run of the course runner (results/runs/), never smoke."""
import json, subprocess, sys
from pathlib import Path
import pytest
from dl2021.provenance import check_notebook
from dl2021.results import load_results

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT / 'nbs').glob('[0-9]*.ipynb'))


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_outputs_come_from_a_recorded_run(nb):
    status, msg = check_notebook(nb)
    assert status != 'error', msg


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_outputs_are_small(nb):
    "What travels to a GPU host must stay small: under 1 MiB of outputs per notebook."
    cells = json.loads(nb.read_text())['cells']
    size = sum(len(json.dumps(c.get('outputs', []))) for c in cells if c['cell_type'] == 'code')
    assert size < 2**20, f'{nb.name}: {size / 2**20:.2f} MiB of outputs (smaller figures, fewer images)'


def test_result_records_name_their_notebook():
    names = {p.name for p in NBS}
    for r in load_results(ROOT / 'results'):
        assert r['notebook'] in names, f"{r['key']}: notebook {r['notebook']!r} does not exist"
        assert r['preset'] in ('cpu', 'full')


def test_results_readme_is_generated_from_the_records():
    "results/README.md (wall time of every notebook) comes from the provenance records, never typed in."
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'course_report.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_headline_table_checks_the_cpu_bar(tmp_path):
    "results/README.md's headline table: ≥ 87 % in ≤ 5 minutes of training, from the records of notebooks 00-16."
    import importlib.util, json
    spec = importlib.util.spec_from_file_location('course_report', ROOT / 'tools' / 'course_report.py')
    cr = importlib.util.module_from_spec(spec); spec.loader.exec_module(cr)
    (tmp_path / 'results').mkdir()
    base = dict(metric='Fashion-MNIST test accuracy', device='CPU', preset='cpu', wall_s=1., seed=0, git_rev='abc')
    for name, nb, ours, train_s in (('a', '10_a.ipynb', 0.88, 200.), ('b', '11_b.ipynb', 0.88, 301.),
                                    ('c', '12_c.ipynb', 0.86, 100.), ('d', '40_d.ipynb', 0.5, 10.)):
        (tmp_path / 'results' / f'{name}.cpu.json').write_text(json.dumps(dict(base, notebook=nb, paper=name, ours=ours,
                                                                                 train_s=train_s)))
    rows = [l for l in cr.headline(tmp_path).splitlines() if l.startswith('| 1')]
    assert [r.split(' | ')[-1] for r in rows] == ['yes |', '**no** |', '**no** |']     # 40_d is not a headline page
