# deeplight-bids BIDS-App image.
#
#   docker build -t deeplight-bids .                                  # CPU (tensorflow-cpu)
#   docker build --build-arg TF_VARIANT=gpu -t deeplight-bids:gpu .   # GPU (tensorflow[and-cuda])
#   docker run --rm -v /data:/data:ro -v /out:/out deeplight-bids /data /out participant
#
# Build arguments:
#   BASE_IMAGE           a Debian bookworm image (python3 3.11 from its packages)
#   TF_VARIANT           cpu (default) or gpu
#   WEIGHTS_CONTEXT_DIR  empty (default): download the published DeepLight weights from the
#                        original repository at its pinned commit; else a folder of the
#                        build context (e.g. "weights", see .dockerignore) holding them
#                        (offline builds).  Every file is verified by checksum either way.
#   TEMPLATEFLOW_FETCH   auto (default: try, skip with a warning when offline), required, no;
#                        for MNI152NLin6Asym res-2 (group figures) and the MNI152NLin2009cAsym ->
#                        MNI152NLin6Asym transform (checksum-verified)
#   PIP_CONFIG_FILE      pip configuration used during the build only (e.g. a mounted file)
#   BUILD_CA_BUNDLE      CA bundle used for downloads during the build only (mounted file)
#   VERSION, VCS_REF, SOURCE_URL   OCI labels; SOURCE_URL (the repository built from, empty when
#                        unknown) is also the outputs' GeneratedBy CodeURL (DEEPLIGHT_CODE_URL)
#
# Targets: the last stage (default) is the app; "test" adds the test suite and its extras.

ARG BASE_IMAGE=debian:bookworm-slim

# --------------------------------------------------------------------------- base
FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# --------------------------------------------------------------------------- deps
# Third-party dependencies only (read from pyproject.toml): this layer is rebuilt when the
# dependencies change, not when the code does.
FROM base AS deps
ARG TF_VARIANT=cpu
ARG PIP_CONFIG_FILE
ARG BUILD_CA_BUNDLE=
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /tmp/build
COPY pyproject.toml ./
RUN case "${TF_VARIANT}" in cpu|gpu) ;; *) echo "TF_VARIANT must be cpu or gpu, not '${TF_VARIANT}'" >&2; exit 1;; esac \
    && python -c "import re, sys, tomllib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
gpu = sys.argv[1] == 'gpu'; \
name = lambda req: re.split(r'[\s;<>=!~\[]', req, maxsplit=1)[0].lower(); \
reqs = [r for r in project['dependencies'] if not (gpu and name(r) in ('tensorflow', 'tensorflow-cpu'))]; \
reqs += project['optional-dependencies']['gpu'] if gpu else []; \
print('\n'.join(reqs))" "${TF_VARIANT}" > requirements.txt \
    && echo "Dependencies (${TF_VARIANT}):" && cat requirements.txt \
    && if [ -n "${BUILD_CA_BUNDLE}" ]; then export PIP_CERT="${BUILD_CA_BUNDLE}"; fi \
    && pip install -r requirements.txt

# --------------------------------------------------------------------------- app
FROM deps AS app
ARG PIP_CONFIG_FILE
ARG BUILD_CA_BUNDLE=
COPY README.md run.py ./
COPY deeplight_bids/ deeplight_bids/
RUN if [ -n "${BUILD_CA_BUNDLE}" ]; then export PIP_CERT="${BUILD_CA_BUNDLE}"; fi \
    && pip install --no-deps . \
    && install -D -m 0755 run.py /run.py \
    && deeplight-bids --version \
    && rm -rf /tmp/build
WORKDIR /

# --------------------------------------------------------------------------- weights
# The published DeepLight weights, checked against the package's registry (git blob or
# sha256 of each file at the pinned commit of the original repository).
FROM app AS weights
ARG WEIGHTS_CONTEXT_DIR=
ARG BUILD_CA_BUNDLE=
ENV DEEPLIGHT_WEIGHTS_DIR=/opt/deeplight-bids/weights
# pyproject.toml is always there, so this COPY also works when no folder is given.
COPY pyproject.toml ${WEIGHTS_CONTEXT_DIR} /tmp/weights-src/
RUN if [ -n "${BUILD_CA_BUNDLE}" ]; then export SSL_CERT_FILE="${BUILD_CA_BUNDLE}"; fi \
    && if [ -z "${WEIGHTS_CONTEXT_DIR}" ]; then \
        echo "Downloading the published DeepLight weights from the original repository (pinned commit)"; \
        deeplight-bids weights fetch --dest "${DEEPLIGHT_WEIGHTS_DIR}"; \
    else \
        echo "Taking the published DeepLight weights from the build-context folder '${WEIGHTS_CONTEXT_DIR}'"; \
        python -c "import shutil, sys; from pathlib import Path; \
from deeplight_bids.models.weights import REGISTRY, verify_published; \
src, dest = Path('/tmp/weights-src'), Path(sys.argv[1]); \
present = {n: src / e.filename for n, e in REGISTRY.items() if (src / e.filename).is_file()}; \
absent = [f'{n} ({e.filename})' for n, e in REGISTRY.items() if n not in present]; \
bad = [f'{n} ({p.name})' for n, p in present.items() if not verify_published(REGISTRY[n], p)]; \
sys.exit('ERROR: checksum mismatch: ' + ', '.join(bad)) if bad else None; \
sys.exit('ERROR: no published weights file in the folder: ' + ', '.join(absent)) if not present else None; \
dest.mkdir(parents=True, exist_ok=True); \
[shutil.copy2(p, dest / p.name) for p in present.values()]; \
print('Verified and installed: ' + ', '.join(f'{n} ({p.name})' for n, p in present.items())); \
print('ABSENT from the image (pass --weights at run time or fetch them): ' + ', '.join(absent)) if absent else None" \
            "${DEEPLIGHT_WEIGHTS_DIR}"; \
    fi \
    && chmod -R a+rX "${DEEPLIGHT_WEIGHTS_DIR}" \
    && deeplight-bids weights list

# --------------------------------------------------------------------------- templateflow
FROM deps AS templateflow
ARG TEMPLATEFLOW_FETCH=auto
ARG BUILD_CA_BUNDLE=
ENV TEMPLATEFLOW_HOME=/opt/templateflow
RUN if [ -n "${BUILD_CA_BUNDLE}" ]; then export SSL_CERT_FILE="${BUILD_CA_BUNDLE}" REQUESTS_CA_BUNDLE="${BUILD_CA_BUNDLE}"; fi \
    && mkdir -p "${TEMPLATEFLOW_HOME}" \
    && if [ "${TEMPLATEFLOW_FETCH}" = no ]; then \
        echo "TemplateFlow: not pre-fetched (TEMPLATEFLOW_FETCH=no)"; \
    elif python -c "from templateflow import api; \
files = api.get('MNI152NLin6Asym', resolution=2, atlas=None); \
files = files if isinstance(files, list) else [files]; \
print('TemplateFlow: fetched', len(files), 'MNI152NLin6Asym res-2 files')" 2>/tmp/templateflow.err; then \
        true; \
    elif [ "${TEMPLATEFLOW_FETCH}" = required ]; then \
        cat /tmp/templateflow.err >&2; \
        echo "ERROR: TemplateFlow download failed (TEMPLATEFLOW_FETCH=required)" >&2; exit 1; \
    else \
        tail -n 1 /tmp/templateflow.err; \
        echo "WARNING: TemplateFlow cannot download (offline build?): MNI152NLin6Asym res-2 NOT pre-fetched into ${TEMPLATEFLOW_HOME}"; \
    fi \
    && rm -f /tmp/templateflow.err \
    && chmod -R a+rX "${TEMPLATEFLOW_HOME}"
# The inter-template transform MNI152NLin2009cAsym -> MNI152NLin6Asym (fMRIPrep's default output
# space), verified against TemplateFlow's published checksum (the MD5 and size of its DataLad
# annex key).  deeplight_bids/prepare/spaces.py holds the same name and checksum; a test checks
# that the two agree.  Offline builds with TEMPLATEFLOW_FETCH=auto skip it with a warning (runs
# in MNI152NLin2009cAsym then need TEMPLATEFLOW_HOME holding it, or --allow-approximate-space).
ARG TEMPLATEFLOW_XFM=tpl-MNI152NLin6Asym_from-MNI152NLin2009cAsym_mode-image_xfm.h5
ARG TEMPLATEFLOW_XFM_MD5=b7130989291ddb85642e19940aaec4c1
ARG TEMPLATEFLOW_XFM_SIZE=204735104
RUN if [ -n "${BUILD_CA_BUNDLE}" ]; then export SSL_CERT_FILE="${BUILD_CA_BUNDLE}" REQUESTS_CA_BUNDLE="${BUILD_CA_BUNDLE}"; fi \
    && if [ "${TEMPLATEFLOW_FETCH}" = no ]; then \
        echo "TemplateFlow: ${TEMPLATEFLOW_XFM} not pre-fetched (TEMPLATEFLOW_FETCH=no)"; \
    elif python -c "import hashlib, sys; from pathlib import Path; from templateflow import api; \
name, md5, size = sys.argv[1], sys.argv[2], int(sys.argv[3]); \
path = Path(api.get('MNI152NLin6Asym', **{'from': 'MNI152NLin2009cAsym'}, mode='image', suffix='xfm', extension='.h5')); \
digest = hashlib.md5(); fobj = open(path, 'rb'); [digest.update(block) for block in iter(lambda: fobj.read(1 << 22), b'')]; \
ok = path.name == name and path.stat().st_size == size and digest.hexdigest() == md5; \
None if ok else path.unlink(); \
sys.exit(f'checksum mismatch for {path} (expected {size} bytes, MD5 {md5})') if not ok else print('TemplateFlow: fetched and verified', path)" \
            "${TEMPLATEFLOW_XFM}" "${TEMPLATEFLOW_XFM_MD5}" "${TEMPLATEFLOW_XFM_SIZE}" 2>/tmp/templateflow-xfm.err; then \
        true; \
    elif [ "${TEMPLATEFLOW_FETCH}" = required ]; then \
        cat /tmp/templateflow-xfm.err >&2; \
        echo "ERROR: TemplateFlow transform download failed (TEMPLATEFLOW_FETCH=required)" >&2; exit 1; \
    else \
        tail -n 1 /tmp/templateflow-xfm.err; \
        echo "WARNING: TemplateFlow cannot download (offline build?): ${TEMPLATEFLOW_XFM} NOT baked into ${TEMPLATEFLOW_HOME}"; \
    fi \
    && rm -f /tmp/templateflow-xfm.err \
    && chmod -R a+rX "${TEMPLATEFLOW_HOME}"

# --------------------------------------------------------------------------- runtime
# On top of "app" (not a copy of its venv): the 2 GB dependency layer is stored once.
FROM app AS runtime
ARG VERSION=dev
ARG VCS_REF=unknown
ARG SOURCE_URL=
ARG TF_VARIANT=cpu
LABEL org.opencontainers.image.title="deeplight-bids" \
      org.opencontainers.image.description="BIDS-App: DeepLight cognitive decoding of task fMRI with LRP explanations (${TF_VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="BSD-3-Clause"
RUN useradd --create-home --home-dir /home/deeplight --uid 1000 --user-group --shell /bin/bash deeplight \
    && chmod 0777 /home/deeplight
COPY --from=templateflow /opt/templateflow /opt/templateflow
COPY --from=weights /opt/deeplight-bids/weights /opt/deeplight-bids/weights
ENV HOME=/home/deeplight \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2 \
    DEEPLIGHT_WEIGHTS_DIR=/opt/deeplight-bids/weights \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    DEEPLIGHT_CONTAINER=docker \
    DEEPLIGHT_CODE_URL=${SOURCE_URL}
USER 1000:1000
WORKDIR /home/deeplight
ENTRYPOINT ["/run.py"]
CMD ["--help"]

# --------------------------------------------------------------------------- test
# docker build --target test -t deeplight-bids:test . && docker run --rm --entrypoint python deeplight-bids:test -m pytest -n 2 /opt/deeplight-bids/tests
FROM runtime AS test
ARG PIP_CONFIG_FILE
ARG BUILD_CA_BUNDLE=
USER 0:0
WORKDIR /opt/deeplight-bids
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['test']))" > /tmp/test-requirements.txt \
    && if [ -n "${BUILD_CA_BUNDLE}" ]; then export PIP_CERT="${BUILD_CA_BUNDLE}"; fi \
    && PIP_NO_CACHE_DIR=1 pip install -r /tmp/test-requirements.txt \
    && rm /tmp/test-requirements.txt
COPY tests/ tests/
RUN chmod a+rwx /opt/deeplight-bids && chmod -R a+rwX /opt/deeplight-bids/tests
USER 1000:1000
WORKDIR /home/deeplight

# --------------------------------------------------------------------------- default
FROM runtime
