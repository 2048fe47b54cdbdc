#!/usr/bin/env bash
# Make sure the data the course uses is on this machine, from Debian's packages:
#   Fashion-MNIST (dataset-fashion-mnist), multilingual text (fortunes*) and WordNet (wordnet-base).
# Fashion-MNIST: already found by dl2021 ($DL2021_DATA, user cache, /usr/share/datasets) -> apt-get -> download (checksummed).
# Text: apt-get only (no download path); the notebooks that need it name the missing package in their error.
set -u
PY=${PY:-.venv/bin/python}
TEXT_PKGS="fortunes fortunes-de fortunes-es fortunes-it fortunes-ru fortunes-pl fortunes-cs fortunes-zh fortunes-bg fortunes-br wordnet-base"
have_fmnist() { "$PY" -c 'from dl2021.data import find_fashion_mnist as f; print("Fashion-MNIST:", f(download=False))' 2>/dev/null; }
missing=""
have_fmnist >/dev/null || missing="dataset-fashion-mnist"
for p in $TEXT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "${missing// /}" ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=$(command -v sudo || true)
  if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
    echo "Installing Debian's$missing ..."
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq $missing >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $missing >/dev/null; }
  else
    echo "Cannot install Debian packages here (no apt-get or no root):$missing" >&2
  fi
fi
have_fmnist && exit 0
# last resort for Fashion-MNIST: the upstream download (with MD5 checks); prints how to fix it if that fails too
"$PY" -c 'from dl2021.data import find_fashion_mnist as f; print("Fashion-MNIST:", f(download=True))'
