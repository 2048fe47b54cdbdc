#!/usr/bin/env python3
"""Run a command and fail if it changed any file under the given folders.

Used by `make test`: `nbdev_clean` must find the notebooks already clean, and `nbdev_export` must find the package
already in sync with the notebooks. Usage: unchanged.py DIR [DIR ...] -- COMMAND [ARGS ...]
"""
import hashlib, subprocess, sys
from pathlib import Path


def snapshot(dirs):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for d in dirs for p in sorted(Path(d).rglob('*')) if p.is_file() and '__pycache__' not in p.parts}


def main(argv):
    if '--' not in argv: sys.exit(__doc__)
    i = argv.index('--')
    dirs, cmd = argv[:i], argv[i + 1:]
    before = snapshot(dirs)
    rc = subprocess.run(cmd).returncode
    if rc: sys.exit(f'{cmd[0]} failed with exit status {rc}')
    after = snapshot(dirs)
    changed = sorted(str(p) for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        print(f"{Path(cmd[0]).name} changed {len(changed)} file(s): {', '.join(changed)}")
        print('Commit the result of running it (the working tree now holds it), then run make test again.')
        sys.exit(1)
    print(f'{Path(cmd[0]).name}: nothing to change')


if __name__ == '__main__':
    main(sys.argv[1:])
