#!/usr/bin/env bash
# Download into .whl/ the wheels a GPU machine with Python 3.12, PyTorch and JAX (CUDA),
# numpy, scipy, pandas, h5py and matplotlib but no internet lacks for `deeplight-bids
# participant --backend jax|torch` and benchmarks/gpu_check.py.  Versions are the ones this
# project is tested with.  benchmarks/gpu_check.sh installs them with
#   pip install --no-index --find-links .whl keras nibabel nilearn pybids templateflow tomli-w
# so pip only adds what is missing there (it never replaces the machine's torch/jax/numpy).
# Usage (from the repository root, with PyPI access): bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
WHEELS=(
    # Keras and its dependencies
    keras==3.15.1 absl-py==2.5.1 namex==0.1.0 optree==0.20.0 ml-dtypes==0.6.0 rich==15.0.0
    markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0 typing-extensions==4.16.0 packaging==26.4
    # images
    nibabel==5.4.2 importlib-resources==7.1.0
    # nilearn (resampling, masking) and scikit-learn
    nilearn==0.14.1 scikit-learn==1.9.1 joblib==1.6.0 threadpoolctl==3.8.0 narwhals==2.29.0 jinja2==3.1.6
    markupsafe==3.0.4 requests==2.34.2 urllib3==2.8.0 idna==3.20 charset-normalizer==3.5.3 certifi==2026.10.19.post1
    # pybids (dataset discovery)
    pybids==0.22.0 formulaic==1.2.2 interface-meta==2.0.1 wrapt==2.5.2 sqlalchemy==2.1.9
    bids-validator==1.14.7.post0 bidsschematools==2.0.1 pyyaml==6.0.4 num2words==0.5.14
    click==8.5.1 universal-pathlib==0.3.10 pathlib-abc==0.5.2 fsspec==2026.9.0 frozendict==2.5.1
    # templateflow (group-level templates), small outputs
    templateflow==25.1.2 acres==0.5.0 platformdirs==4.14.8 tqdm==4.70.1 tomli-w==1.2.0
)
for wheel in "${WHEELS[@]}"; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$wheel"
done
# docopt (needed by num2words, pybids' dependency) exists only as a source archive (pure Python;
# pip builds it offline with setuptools)
python3 -m pip download --quiet --no-deps --no-binary=:all: -d .whl docopt==0.6.2
du -sh .whl
