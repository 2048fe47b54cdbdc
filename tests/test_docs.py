"""Everything up to Quarto's input: nbdev_proc_nbs runs, front matter, sidebar, no leaked directives, _quarto.yml.

Quarto itself is not installable here (not on PyPI, Debian or npm); `make docs` builds the site where it exists.
"""
import json, os, re, shutil, stat, subprocess, sys
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
    shutil.rmtree(ROOT / '_proc', ignore_errors=True)             # no stale pages from an earlier run
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
    allowed = ['Foundations', 'Architectures', 'Generative', 'Self-supervised', 'Contrastive', 'Language',
               'Training dynamics', 'Honourable mentions']                    # the order of the notebooks' numbers
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
    kw = dict(paper_value=0.95, paper_source='Table 2', paper_setting='ImageNet', anchor_value=0.943,
              anchor_source='course22p2', anchor_setting='Fashion-MNIST, 20 epochs', seed=0, notebook='05_resnet.ipynb')
    record('P', 'acc', 0.91, preset='cpu', wall_s=3.2, device='CPU (2 cores)', **kw)
    record('P', 'acc', 0.93, preset='full', wall_s=1.5, device='NVIDIA H100', **kw)
    record('P', 'acc', 0.5, preset='smoke', wall_s=0.1, **kw)                 # never recorded
    page = write_results_page(tmp_path / 'results.md', tmp_path / 'r').read_text()
    assert page.startswith('---\ntitle: "Results"')
    rows = [l for l in page.splitlines() if '| P |' in l]
    assert len(rows) == 1, rows                                               # one row per metric, both runs in it
    cells = [c.strip() for c in rows[0].split(' | ')]
    assert cells[3:5] == ['0.91', '0.93']                                      # ours on CPU, ours on GPU
    assert '0.95 (ImageNet; Table 2)' in rows[0] and '0.943 (Fashion-MNIST, 20 epochs; course22p2)' in rows[0]
    assert 'cpu: 3 s, CPU (2 cores)' in rows[0] and 'full: 2 s, NVIDIA H100' in rows[0]
    assert '0.5' not in rows[0]


def test_docs_refuses_without_quarto(tmp_path):
    "make docs stops with a clear message, and builds nothing, when Quarto is missing."
    env = {**os.environ, 'PATH': '/usr/bin:/bin'}
    if any(Path(d, 'quarto').exists() for d in env['PATH'].split(':')): pytest.skip('quarto is installed')
    r = subprocess.run(['make', '-s', 'docs'], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and 'quarto.org' in r.stdout and 'Nothing was built' in r.stdout


# ---- links: every cross-link and every link in prose points to a page (and a heading) the site builds ------------
DOC_HOST = 'https://dl2021.github.io/dl2021/'


def _pandoc_id(heading: str) -> str:
    "The identifier pandoc gives a heading (auto_identifiers), or its explicit {#id}."
    m = re.search(r'\{#([^}\s]+)[^}]*\}\s*$', heading)
    if m: return m.group(1)
    t = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)        # links -> their text
    t = re.sub(r'[`*]', '', t).strip().lower()
    t = re.sub(r'[^\w\s.-]', '', t).replace(' ', '-')
    return re.sub(r'^[^a-z]+', '', t)


def _texts(nb: dict):
    "Every piece of Markdown a processed notebook shows: markdown cells and markdown outputs (show_doc)."
    for c in nb['cells']:
        if c['cell_type'] == 'markdown': yield ''.join(c['source'])
        for o in c.get('outputs', []):
            md = o.get('data', {}).get('text/markdown')
            if md: yield ''.join(md)


def _site(proc):
    "{built page (html name): set of heading ids}, and {source file name: html name}."
    pages, sources = {}, {}
    for p in sorted(proc.iterdir()):
        if p.suffix == '.ipynb':
            nb = json.loads(p.read_text())
            fm = _front_matter(nb)
            html = fm.get('output-file', p.stem + '.html')
            texts = list(_texts(nb))
        elif p.suffix in ('.md', '.qmd') and p.name != 'README.md':
            html, texts = p.stem + '.html', [p.read_text()]
        else: continue
        ids = {_pandoc_id(l.lstrip('#')) for t in texts for l in t.splitlines() if re.match(r'#{1,6} ', l)}
        pages[html], sources[p.name] = ids, html
    return pages, sources


LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')


def test_links_point_to_built_pages_and_headings(proc):
    pages, sources = _site(proc)
    assert 'core.html' in pages and 'registry.html' in pages and 'results.html' in pages
    broken = []
    for p in sorted(proc.glob('*.ipynb')) + sorted(proc.glob('*.md')):
        texts = _texts(json.loads(p.read_text())) if p.suffix == '.ipynb' else [p.read_text()]
        for t in texts:
            for target in LINK.findall(t):
                if target.startswith(DOC_HOST): target = target[len(DOC_HOST):]
                elif re.match(r'^[a-z]+:', target) or target.startswith('#'): continue
                page, _, anchor = target.partition('#')
                html = sources.get(page, page if page.endswith('.html') else None)
                if html not in pages: broken.append(f'{p.name}: {target} (no such page on the site)')
                elif anchor and anchor not in pages[html]: broken.append(f'{p.name}: {target} (no heading #{anchor})')
    assert not broken, 'broken links:\n' + '\n'.join(broken)


def test_api_index_points_to_built_pages(proc):
    "nbdev's index of the package (used for every automatic cross-link) names pages the site builds."
    from dl2021._modidx import d
    pages, _ = _site(proc)
    bad = sorted({v[0].split('#')[0] for mod in d['syms'].values() for v in mod.values()} - set(pages))
    assert not bad, f'_modidx.py links to pages the site does not build: {bad}'


def test_every_notebook_page_has_the_run_box(proc):
    for p in pages():
        if not p.endswith('.ipynb') or p == 'index.ipynb': continue
        nb = json.loads((proc / p).read_text())
        text = '\n'.join(''.join(c['source']) for c in nb['cells'][:4] if c['cell_type'] == 'markdown')
        assert '## Run this page' in text and f'make course NB=nbs/{p}' in text, f'{p}: no run box under the title'
        assert 'colab.research.google.com/github/dl2021/dl2021/blob/main/nbs/' + p in text
        assert re.search(r'`cpu`: (not run yet|[\d.]+ (min|s) on )', text), text


def test_no_machine_paths_or_private_files_in_pages():
    "Readers cannot follow a path on our machines, nor open the project's private reference file."
    for p in sorted(NBS.glob('*.ipynb')):
        s = p.read_text()
        for bad in ('/work/', 'anchors.md', '/tmp/', '/root/'):
            assert bad not in s, f'{p.name} mentions {bad!r}'


def test_home_page_maps_every_chapter_and_only_existing_ones():
    home = json.loads((NBS / 'index.ipynb').read_text())
    text = '\n'.join(''.join(c['source']) for c in home['cells'])
    linked = set(re.findall(r'\]\(([\w.-]+\.ipynb)\)', text))
    missing = [l for l in linked if not (NBS / l).exists()]
    assert not missing, f'the home page links to notebooks that do not exist: {missing}'
    unlisted = [p for p in pages() if p.endswith('.ipynb') and p != 'index.ipynb' and p not in linked]
    assert not unlisted, f'the home page does not list: {unlisted}'
    assert text.count('\n# ') == 0, 'the home page repeats the title as a level-1 heading'
