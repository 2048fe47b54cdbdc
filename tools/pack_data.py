#!/usr/bin/env python3
"""Pack the course's data for a GPU host with no internet (`make wheelhouse` calls this): into `data/`,
Fashion-MNIST's four .gz files as they are, and `text.tar.xz` holding exactly the files the text readers use
(the fortunes of every installed language, WordNet's data.* and index.* files). `make course` unpacks the archive on
the host. What travels to the host (working tree, wheels, data) must stay under 64 MiB, hence only these files.
"""
import shutil, sys, tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(dest=ROOT / 'data'):
    from dl2021.data import find_fashion_mnist, FMNIST_FILES
    from dl2021.text import fortunes_dir, available_languages, _collection_files, wordnet_dir, POS_FILES
    (dest / 'fashion-mnist').mkdir(parents=True, exist_ok=True)
    src = find_fashion_mnist(download=True)
    for names in FMNIST_FILES.values():
        for n in names:
            f = src / f'{n}.gz' if (src / f'{n}.gz').exists() else src / n
            shutil.copy2(f, dest / 'fashion-mnist' / f.name)
    froot, wroot = fortunes_dir(), wordnet_dir()
    files = [(p, Path('fortunes') / p.relative_to(froot)) for lang in available_languages(froot)
             for p in _collection_files(lang, froot).values()]
    files += [(wroot / f'{k}.{pos}', Path('wordnet') / f'{k}.{pos}') for pos in POS_FILES.values() for k in ('data', 'index')]
    with tarfile.open(dest / 'text.tar.xz', 'w:xz') as tar:
        for p, arc in files: tar.add(p.resolve(), arcname=str(arc))      # links (Debian has many) as the files they name
    for p in sorted(dest.rglob('*')):
        if p.is_file(): print(f'{p.relative_to(ROOT)}: {p.stat().st_size / 2**20:.1f} MiB')


if __name__ == '__main__':
    main()
