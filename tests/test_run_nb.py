"""tools/run_nb.py, the executor behind `make gpu`: outputs written back and cleaned; failures leave the notebook alone."""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _nb(cells):
    return {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': f'c{i}', 'metadata': {}, 'outputs': [],
                       'source': src} for i, src in enumerate(cells)],
            'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}},
            'nbformat': 4, 'nbformat_minor': 5}


def _run(path):
    return subprocess.run([sys.executable, 'tools/run_nb.py', str(path)], cwd=ROOT, capture_output=True, text=True)


def test_outputs_written_back(tmp_path):
    p = tmp_path / 'ok.ipynb'
    p.write_text(json.dumps(_nb(['x = 6 * 7\nprint(x)', '#| eval: false\nraise ValueError("skipped")',
                                '#| gpu\nx + 1'])))
    r = _run(p)
    assert r.returncode == 0, r.stderr
    cells = json.loads(p.read_text())['cells']
    assert ''.join(cells[0]['outputs'][0]['text']).strip() == '42'
    assert cells[1]['outputs'] == []                                   # eval: false is skipped
    assert cells[2]['outputs'][0]['data']['text/plain'] == ['43'] or \
        ''.join(cells[2]['outputs'][0]['data']['text/plain']) == '43'  # gpu cells run
    assert all(c['execution_count'] is None for c in cells)           # cleaned the nbdev way


def test_failure_leaves_notebook_untouched(tmp_path):
    p = tmp_path / 'bad.ipynb'
    p.write_text(json.dumps(_nb(['print(1)', 'raise RuntimeError("boom")'])))
    before = p.read_text()
    r = _run(p)
    assert r.returncode == 1 and 'boom' in r.stderr
    assert p.read_text() == before
    assert (tmp_path / '_failed' / 'bad.ipynb').exists()


def test_semicolon_hides_the_value_not_the_prints(tmp_path):
    p = tmp_path / 'semi.ipynb'
    p.write_text(json.dumps(_nb(['print("shown"); 6 * 7;', '6 * 7;', 'x = 1;  # a comment'])))
    r = _run(p)
    assert r.returncode == 0, r.stderr
    cells = json.loads(p.read_text())['cells']
    assert [''.join(o.get('text', '')) for o in cells[0]['outputs']] == ['shown\n']      # execnb alone drops it
    assert cells[1]['outputs'] == [] and cells[2]['outputs'] == []                       # no value shown
