#!/usr/bin/env bash
# Installs dyngraph with everything its tests, examples and benchmarks need.
#   bash install.sh            # from the repository root
# torch-scatter / torch-cluster are optional compiled extensions. They are installed from
# ../shared/wheels (prebuilt for torch 2.14.1, CPython 3.11) when that folder exists; otherwise
# they are skipped (dyngraph works without them) unless DYNGRAPH_BUILD_EXTENSIONS=1 asks pip to
# compile them from source, which takes about 40 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

"$PY" -m pip install --upgrade --quiet pip
# torch first: the compiled extensions build against it.
"$PY" -m pip install --quiet "torch>=2.2" "torchvision>=0.17"
"$PY" -m pip install --quiet -e ".[test,bench,examples,hf,models,docs]"

WHEELS=../shared/wheels
if [ -d "$WHEELS" ]; then
    if ! "$PY" -m pip install --quiet --no-build-isolation --no-index --find-links "$WHEELS" \
            torch-scatter torch-cluster; then
        echo "install.sh: the prebuilt wheels in $WHEELS do not fit this torch/Python;" \
             "continuing without torch-scatter/torch-cluster" >&2
    fi
elif [ "${DYNGRAPH_BUILD_EXTENSIONS:-0}" = "1" ]; then
    "$PY" -m pip install --no-build-isolation torch-scatter torch-cluster
else
    echo "install.sh: no $WHEELS folder; skipping the optional torch-scatter/torch-cluster" \
         "(set DYNGRAPH_BUILD_EXTENSIONS=1 to compile them)" >&2
fi
"$PY" -c "import dyngraph, sys; print('dyngraph', dyngraph.__version__, 'ready;', dyngraph.typing.extensions_summary())"
