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


def _png(px):
    import io
    from PIL import Image
    b = io.BytesIO(); Image.fromarray(px, 'RGBA').save(b, 'PNG'); return b.getvalue()


def _pixels(data):
    import io
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(data)).convert('RGBA'))


def test_shrink_png_is_lossless_and_smaller():
    import numpy as np
    sys.path.insert(0, str(ROOT / 'tools'))
    from run_nb import shrink_png
    rng = np.random.default_rng(0)
    few = np.full((60, 80, 4), 255, np.uint8); few[10:30, 5:50, :3] = (30, 119, 180)      # a figure: few colours
    many = np.full((60, 80, 4), 255, np.uint8); many[..., :3] = rng.integers(0, 256, (60, 80, 3))   # > 256 colours
    clear = few.copy(); clear[0, 0, 3] = 0                                                 # not opaque: keeps alpha
    for px in (few, many, clear):
        data = _png(px)
        new = shrink_png(data)
        assert len(new) <= len(data)
        np.testing.assert_array_equal(_pixels(new), px)
    assert len(shrink_png(_png(few))) < len(_png(few)) // 2                                # palette + no alpha


def test_shrink_flag_rewrites_png_outputs_only(tmp_path):
    import base64
    import numpy as np
    px = np.full((50, 70, 4), 255, np.uint8); px[5:20, 5:40, :3] = (200, 30, 30)
    b64 = base64.b64encode(_png(px)).decode()
    nb = _nb(['print(1)'])
    nb['cells'][0]['outputs'] = [{'output_type': 'display_data', 'metadata': {},
                                  'data': {'image/png': b64, 'text/plain': ['<Figure>']}}]
    p = tmp_path / 'fig.ipynb'
    p.write_text(json.dumps(nb))
    r = subprocess.run([sys.executable, 'tools/run_nb.py', '--shrink', str(p)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(p.read_text())['cells'][0]['outputs'][0]['data']
    assert len(out['image/png']) < len(b64) and out['text/plain'] == ['<Figure>']
    np.testing.assert_array_equal(_pixels(base64.b64decode(out['image/png'])), px)
    assert json.loads(p.read_text())['cells'][0]['source'] == 'print(1)'


def test_shrink_resigns_only_the_recorded_run(tmp_path):
    "A notebook whose outputs are its recorded run's stays valid after --shrink; outputs the record lacks stay foreign."
    import base64
    import numpy as np
    sys.path.insert(0, str(ROOT))
    from dl2021.provenance import write_provenance, check_notebook
    (tmp_path / 'settings.ini').write_text('[DEFAULT]\n')
    (tmp_path / 'nbs').mkdir()
    px = np.full((50, 70, 4), 255, np.uint8); px[5:20, 5:40, :3] = (20, 160, 60)
    fig = {'output_type': 'display_data', 'metadata': {},
           'data': {'image/png': base64.b64encode(_png(px)).decode(), 'text/plain': ['<Figure>']}}
    for name in ('rec', 'edited'):
        nb = _nb(['plot()'])
        nb['cells'][0]['outputs'] = [fig]
        p = tmp_path / 'nbs' / f'{name}.ipynb'
        p.write_text(json.dumps(nb))
        write_provenance(p, 'cpu', 'CPU', 1.0)
    edited = tmp_path / 'nbs' / 'edited.ipynb'                      # an output changed after its run was recorded
    nb = json.loads(edited.read_text()); nb['cells'][0]['outputs'][0]['data']['text/plain'] = ['<edited>']
    edited.write_text(json.dumps(nb))
    assert check_notebook(edited)[0] == 'error'
    r = subprocess.run([sys.executable, 'tools/run_nb.py', '--shrink', str(tmp_path / 'nbs' / 'rec.ipynb'), str(edited)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert check_notebook(tmp_path / 'nbs' / 'rec.ipynb')[0] == 'ok'
    assert check_notebook(edited)[0] == 'error'
