"""Everything up to Quarto's input: nbdev_proc_nbs runs, front matter, sidebar, no leaked directives, _quarto.yml.

Quarto itself is not installable here (not on PyPI, Debian or npm); `make docs` builds the site where it exists.
"""
import json, os, stat, subprocess, sys
from pathlib import Path
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
BIN = Path(sys.executable).parent


def pages():
    "Every page of the site: notebooks and .qmd files, except helper files starting with _ or ."
    return sorted(p.relative_to(NBS).as_posix() for ext in ('*.ipynb', '*.qmd') for p in NBS.rglob(ext)
                  if not any(part.startswith(('.', '_')) for part in p.relative_to(NBS).parts))


def sidebar_entries(node):
    if isinstance(node, str): yield node
    elif isinstance(node, dict):
        if 'href' in node: yield node['href']
        yield from sidebar_entries(node.get('contents', []))
    elif isinstance(node, list):
        for n in node: yield from sidebar_entries(n)


@pytest.fixture(scope='module')
def proc(tmp_path_factory):
    "Run nbdev_proc_nbs with a stand-in `quarto` on PATH (it is only looked up, never run, before rendering)."
    fake = tmp_path_factory.mktemp('bin')
    q = fake / 'quarto'
    q.write_text('#!/bin/sh\necho "stand-in quarto: not for rendering" >&2\nexit 3\n')
    q.chmod(q.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, 'PATH': f'{fake}:{BIN}:{os.environ["PATH"]}'}
    subprocess.run([sys.executable, '-c', 'from dl2021.results import write_results_page as w; w("nbs/results.md")'],
                   cwd=ROOT, env=env, check=True)
    r = subprocess.run([str(BIN / 'nbdev_proc_nbs'), '--n_workers', '1'], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return ROOT / '_proc'


def test_quarto_yml_is_single_source():
    top = yaml.safe_load((ROOT / '_quarto.yml').read_text())
    assert top['project']['type'] == 'website' and 'sidebar.yml' in top['metadata-files']
    link = NBS / '_quarto.yml'
    assert link.is_symlink() and link.resolve() == (ROOT / '_quarto.yml').resolve()


def test_every_page_in_sidebar_once_and_grouped():
    sb = yaml.safe_load((NBS / 'sidebar.yml').read_text())['website']['sidebar']['contents']
    entries = list(sidebar_entries(sb))
    for p in pages():
        assert entries.count(p) == 1, f'{p} appears {entries.count(p)} times in nbs/sidebar.yml'
    missing = [e for e in entries if e != 'results.md' and not (NBS / e).exists()]
    assert not missing, f'sidebar names pages that do not exist: {missing}'
    sections = [n['section'] for n in sb if isinstance(n, dict) and 'section' in n]
    assert sections[0] == 'Foundations'
    allowed = ['Foundations', 'Architectures', 'Self-supervised', 'Contrastive', 'Generative', 'Language',
               'Training dynamics', 'Honourable mentions']
    assert all(s in allowed for s in sections), sections
    assert sections == sorted(sections, key=allowed.index), 'sections out of the course order'


# nbdev's own directives (and the course's test flags): Quarto cell options such as `#| echo: false` are fine
NBDEV_DIRECTIVES = {'export', 'exports', 'exporti', 'default_exp', 'hide', 'hide_input', 'hide_output', 'exec_doc',
                    'filter_stream', 'collapse_output', 'gpu', 'slow', 'skip_exec', 'skip_showdoc'}


def _key(line: str) -> str: return line.lstrip()[2:].strip().split(':')[0].split()[0] if line.strip() != '#|' else ''


def _front_matter(nb: dict) -> dict:
    "Front matter of a processed notebook: YAML between --- lines in its first cell, where Quarto reads it."
    first = nb['cells'][0]
    src = ''.join(first['source'])
    assert first['cell_type'] in ('raw', 'markdown') and src.startswith('---\n'), 'no front matter cell'
    return yaml.safe_load(src.split('---')[1])


def test_directive_key():
    assert [_key(l) for l in ('#| export', '#|hide', '#| default_exp core', '#| echo: false')] == \
        ['export', 'hide', 'default_exp', 'echo']


def test_processed_pages(proc):
    for p in pages():
        out = proc / p
        assert out.exists(), f'{p} was not processed'
        if p.endswith('.qmd'):
            fm = yaml.safe_load(out.read_text().split('---')[1])
        else:
            nb = json.loads(out.read_text())
            fm = _front_matter(nb)
            for c in nb['cells']:
                if c['cell_type'] != 'code': continue
                leaked = [l for l in ''.join(c['source']).splitlines()
                          if l.lstrip().startswith('#|') and _key(l) in NBDEV_DIRECTIVES]
                assert not leaked, f'{p}: nbdev directive leaked into the page: {leaked}'
        assert fm.get('title') and fm.get('description'), f'{p} lacks a title or description: {fm}'
    assert (proc / '_quarto.yml').exists() and (proc / 'results.md').exists()


def test_results_page_renders_records(tmp_path, monkeypatch):
    from dl2021.results import record, write_results_page
    monkeypatch.setenv('DL2021_RESULTS', str(tmp_path / 'r'))
    record('P', 'acc', 0.91, 0.95, 'Table 2', preset='full', wall_s=3.2, seed=0, paper_setting='ImageNet')
    page = write_results_page(tmp_path / 'results.md', tmp_path / 'r').read_text()
    assert page.startswith('---\ntitle: "Results"')
    row = [l for l in page.splitlines() if l.startswith('| P |')][0]
    assert '0.91' in row and '0.95' in row and '3.2 s' in row and 'ImageNet (Table 2)' in row


def test_docs_refuses_without_quarto(tmp_path):
    "make docs stops with a clear message, and builds nothing, when Quarto is missing."
    env = {**os.environ, 'PATH': '/usr/bin:/bin'}
    if any(Path(d, 'quarto').exists() for d in env['PATH'].split(':')): pytest.skip('quarto is installed')
    r = subprocess.run(['make', '-s', 'docs'], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and 'quarto.org' in r.stdout and 'Nothing was built' in r.stdout
