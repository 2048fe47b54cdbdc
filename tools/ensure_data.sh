#!/usr/bin/env bash
# Make sure the data the tests use is on this machine: Fashion-MNIST (Debian's dataset-fashion-mnist).
# Order: already found by dl2021 ($DL2021_DATA, user cache, /usr/share/datasets) -> apt-get -> download (checksummed).
set -u
PY=${PY:-.venv/bin/python}
have() { "$PY" -c 'from dl2021.data import find_fashion_mnist as f; print("Fashion-MNIST:", f(download=False))' 2>/dev/null; }
have && exit 0
SUDO=; [ "$(id -u)" = 0 ] || SUDO=$(command -v sudo || true)
if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
  echo "Installing Debian's dataset-fashion-mnist ..."
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
  have && exit 0
fi
# last resort: the upstream download (with MD5 checks); prints how to fix it if that fails too
"$PY" -c 'from dl2021.data import find_fashion_mnist as f; print("Fashion-MNIST:", f(download=True))'
