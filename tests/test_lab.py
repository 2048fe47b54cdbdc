"""`make lab` starts JupyterLab as root and as a normal user, on the home notebook, with jupytext and ipywidgets."""
import json, os, shutil, signal, socket, subprocess, tempfile, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
WANTED = {'jupyterlab-jupytext', 'jupyter-widgets-jupyterlab-manager'}     # as /lab/api/extensions names them


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r: return json.loads(r.read())


def _lab(user=None, path_prefix=None):
    "Start `make lab` (headless), return the extensions it serves and whether the home notebook is there; then stop it."
    home = tempfile.mkdtemp(); os.chmod(home, 0o777)
    port, token = _free_port(), 'dl2021-test'
    cmd = ['make', '-s', 'lab', f'LAB_ARGS=--no-browser --port={port} --IdentityProvider.token={token}']
    if user: cmd = ['runuser', '-u', user, '--'] + cmd
    env = {**os.environ, 'HOME': home, 'PATH': f"{path_prefix}:{os.environ['PATH']}" if path_prefix else os.environ['PATH'], 'JUPYTER_RUNTIME_DIR': f'{home}/rt', 'JUPYTER_DATA_DIR': f'{home}/data',
           'JUPYTER_CONFIG_DIR': f'{home}/cfg', 'IPYTHONDIR': f'{home}/ipy', 'MPLCONFIGDIR': f'{home}/mpl'}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        t0 = time.time()
        while time.time() - t0 < 90:
            if p.poll() is not None: raise AssertionError(f'make lab exited: {p.stdout.read()[-3000:]}')
            try:
                exts = _get(f'http://127.0.0.1:{port}/lab/api/extensions?token={token}')
                break
            except OSError: time.sleep(1)
        else: raise AssertionError('JupyterLab did not answer within 90 s')
        home_nb = _get(f'http://127.0.0.1:{port}/api/contents/index.ipynb?content=0&token={token}')
        return {e['name'] for e in exts if e.get('enabled', True)}, home_nb['type']
    finally:
        try: os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        try: p.wait(10)
        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


def test_lab_starts_for_this_user():
    names, kind = _lab()
    assert WANTED <= names, names
    assert kind == 'notebook'


def _usable_by(user):
    "Can `user` run the project's Python (not when it lives under root's home, as with a pyenv in /root)?"
    if os.geteuid() != 0 or not shutil.which('runuser'): return False
    return subprocess.run(['runuser', '-u', user, '--', str(ROOT / '.venv/bin/python'), '-c', 'import jupyterlab'],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _usable_by('nobody'), reason="needs root, and a Python that other users can run")
def test_lab_starts_for_a_normal_user():
    names, kind = _lab(user='nobody')
    assert WANTED <= names, names


@pytest.mark.skipif(os.geteuid() != 0, reason='checks the flag by letting root pose as a normal user')
def test_allow_root_is_passed_only_to_root(tmp_path):
    "`id -u` answering 1000: make lab must not pass --allow-root, so the (really root) server refuses to start."
    fake = tmp_path / 'bin'; fake.mkdir()
    (fake / 'id').write_text('#!/bin/sh\n[ "$1" = -u ] && echo 1000 || /usr/bin/id "$@"\n'); (fake / 'id').chmod(0o755)
    with pytest.raises(AssertionError, match='allow-root'): _lab(path_prefix=str(fake))
