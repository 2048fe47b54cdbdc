#!/usr/bin/env python3
"""The body of `make test`: clean check, export check, nbdev_test on every notebook, pytest; one summary line.

Run from the repository root with the project's virtual environment (`make test` does both).
"""
import os, re, subprocess, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

BIN = Path(sys.executable).parent


def run(title, cmd, env=None):
    print(f'\n=== {title}: {" ".join(map(str, cmd))}', flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(list(map(str, cmd)), env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    print(p.stdout, end='', flush=True)
    dt = time.perf_counter() - t0
    print(f'--- {title}: {"ok" if p.returncode == 0 else "FAILED"} in {dt:.0f} s', flush=True)
    return p, dt


def notebooks():
    return sorted(p for p in Path('nbs').rglob('*.ipynb')
                  if not any(part.startswith(('.', '_')) for part in p.relative_to('nbs').parts))


def main():
    t0 = time.perf_counter()
    passed = failed = 0
    times = {}
    py = sys.executable
    # 1-2: the notebooks are clean and the package is in sync with them (CI fails otherwise)
    for title, dirs, tool in (('nbdev_clean', ['nbs'], 'nbdev_clean'), ('nbdev_export', ['dl2021'], 'nbdev_export')):
        p, times[title] = run(title, [py, 'tools/unchanged.py', *dirs, '--', BIN / tool])
        passed, failed = passed + (p.returncode == 0), failed + (p.returncode != 0)
    # 3: every notebook, CPU smoke preset, gpu/slow cells skipped (settings.ini tst_flags)
    nbs = notebooks()
    env = {'DL2021_PRESET': 'smoke', 'DL2021_PROGRESS': '0', 'MPLBACKEND': 'Agg'}
    nb_env = {**env, 'OMP_NUM_THREADS': '1'}        # two notebooks at a time on two cores: one thread each
    p, times['nbdev_test'] = run(f'nbdev_test ({len(nbs)} notebooks)', [BIN / 'nbdev_test', '--n_workers', '2', '--timing'], nb_env)
    bad = set(re.findall(r'^\s+(\S+\.ipynb)\s*$', p.stdout.split('Tests Failed On The Following Notebooks:')[-1], re.M)) \
        if p.returncode else set()
    if p.returncode and not bad: bad = {'(nbdev_test itself)'}
    nb_fail = len(bad); nb_pass = len(nbs) - len(bad & {n.name for n in nbs})
    passed, failed = passed + nb_pass, failed + nb_fail
    # 4: pytest
    junit = Path('.pytest_cache') / 'junit.xml'
    p, times['pytest'] = run('pytest', [py, '-m', 'pytest', 'tests', '-q', f'--junitxml={junit}'], env)
    try:
        s = ET.parse(junit).getroot()
        s = s if s.tag == 'testsuite' else s.find('testsuite')
        n, f, e, sk = (int(s.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped'))
        t_pass, t_fail = n - f - e - sk, f + e
    except (OSError, ET.ParseError, AttributeError):
        t_pass, t_fail = 0, 1
    if p.returncode not in (0, 1) and not t_fail: t_fail = 1      # collection errors, interrupted, no tests
    if t_pass == 0 and t_fail == 0: t_fail = 1
    passed, failed = passed + t_pass, failed + t_fail
    # 5: notebooks whose code changed after their committed outputs were made (listed, not a failure)
    sys.path.insert(0, '.')
    from dl2021.provenance import check_notebook
    checks = [check_notebook(n) for n in nbs]
    stale = [m for s, m in checks if s == 'stale']
    unrun = [m.split(':')[0] for s, m in checks if s == 'no outputs']
    print(f'\n=== provenance: {len(checks) - len(stale) - len(unrun)} notebooks up to date, {len(stale)} stale, '
          f'{len(unrun)} not executed yet')
    for m in stale: print(f'  stale: {m}')
    if unrun: print(f"  not executed yet: {', '.join(unrun)}")
    total = time.perf_counter() - t0
    print(f"\nmake test: notebooks {nb_pass}/{len(nbs)} ok, pytest {t_pass} passed / {t_fail} failed; "
          + ', '.join(f'{k} {v:.0f} s' for k, v in times.items()) + f'; total {total:.0f} s')
    print(f'summary: {passed} passed, {failed} failed')
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
