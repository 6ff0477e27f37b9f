#!/bin/bash
# Submit a deeplight-bids study to SLURM: one array task per participant, then the group level.
#
#   hpc/submit.sh BIDS_DIR OUTPUT_DIR [options] [-- participant-level options]
#
# Writes the participant list (participant_id of BIDS_DIR/participants.tsv, else the sub-*
# folders) to LOG_DIR/participants-<time>.txt, submits hpc/participant.sbatch as an array over
# it and hpc/group.sbatch with --dependency=afterok (or afterany) on the array, and prints both
# job ids. Resubmitting the same command resumes: finished runs are skipped.
#
# Options:
#   --participant-label L [L ...]  only these participants (with or without "sub-")
#   --throttle N      at most N array tasks at once (--array=1-M%N; default 10)
#   --cpus N          CPUs per participant task, passed on as --nprocs (default 4)
#   --mem SIZE        memory per participant task (default 4G; a 405-volume run peaks < 3 GiB)
#   --time HH:MM:SS   time limit per participant task (default 02:00:00)
#   --group-after ok|any
#                     ok (default): group level only if every task succeeded;
#                     any: group level once all tasks ended; its report lists those that failed
#   --no-group        submit the participant array only
#   --group-arg ARG   add ARG to the group level's options (repeatable), e.g. --group-arg=--correct-only
#   --sbatch-arg ARG  add ARG to both sbatch calls (repeatable), e.g. --sbatch-arg=--partition=cpu
#   --log-dir DIR     SLURM logs and participant lists (default OUTPUT_DIR/logs/slurm)
#   --dry-run         print the sbatch commands instead of submitting
#   -h, --help
# Everything after "--" goes to the participant level (e.g. -- --task motor --no-lrp).
# DEEPLIGHT_CONTAINER=/path/image.sif runs the container instead of the installed command
# (see hpc/participant.sbatch); sbatch passes the environment to the jobs.
#
# Exit status: 0 submitted, 2 usage error, 3 BIDS_DIR unusable (missing, no participants),
# 1 sbatch failed.
set -euo pipefail

EXIT_USAGE=2
EXIT_INPUT=3
HPC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    sed -n '2,/^# Exit status/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    local code=$1
    shift
    echo "submit.sh: error: $*" >&2
    exit "${code}"
}

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die "${EXIT_USAGE}" "$1 needs a value (see --help)"
}

throttle=10
cpus=4
mem=4G
time_limit=02:00:00
group_after=ok
submit_group=1
dry_run=0
log_dir=
labels=()
group_args=()
sbatch_args=()
app_args=()
positional=()

while [[ $# -gt 0 ]]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --participant-label)
            shift
            while [[ $# -gt 0 && $1 != -* ]]; do labels+=("${1#sub-}"); shift; done
            [[ ${#labels[@]} -gt 0 ]] || die "${EXIT_USAGE}" "--participant-label needs at least one label"
            continue ;;
        --throttle) need_value "$@"; throttle=$2; shift ;;
        --throttle=*) throttle=${1#*=} ;;
        --cpus) need_value "$@"; cpus=$2; shift ;;
        --cpus=*) cpus=${1#*=} ;;
        --mem) need_value "$@"; mem=$2; shift ;;
        --mem=*) mem=${1#*=} ;;
        --time) need_value "$@"; time_limit=$2; shift ;;
        --time=*) time_limit=${1#*=} ;;
        --group-after) need_value "$@"; group_after=$2; shift ;;
        --group-after=*) group_after=${1#*=} ;;
        --no-group) submit_group=0 ;;
        --group-arg) need_value "$@"; group_args+=("$2"); shift ;;
        --group-arg=*) group_args+=("${1#*=}") ;;
        --sbatch-arg) need_value "$@"; sbatch_args+=("$2"); shift ;;
        --sbatch-arg=*) sbatch_args+=("${1#*=}") ;;
        --log-dir) need_value "$@"; log_dir=$2; shift ;;
        --log-dir=*) log_dir=${1#*=} ;;
        --dry-run) dry_run=1 ;;
        --) shift; app_args=("$@"); break ;;
        -*) die "${EXIT_USAGE}" "unknown option $1 (participant-level options go after --; see --help)" ;;
        *) positional+=("$1") ;;
    esac
    shift
done

[[ ${#positional[@]} -eq 2 ]] || die "${EXIT_USAGE}" "usage: submit.sh BIDS_DIR OUTPUT_DIR [options] [-- participant options] (see --help)"
[[ "${throttle}" =~ ^[1-9][0-9]*$ ]] || die "${EXIT_USAGE}" "--throttle ${throttle}: a positive integer is needed"
[[ "${cpus}" =~ ^[1-9][0-9]*$ ]] || die "${EXIT_USAGE}" "--cpus ${cpus}: a positive integer is needed"
[[ "${group_after}" == ok || "${group_after}" == any ]] || die "${EXIT_USAGE}" "--group-after ${group_after}: use ok or any"

[[ -d "${positional[0]}" ]] || die "${EXIT_INPUT}" "${positional[0]}: BIDS_DIR is not a folder; give the dataset's root"
bids_dir=$(cd "${positional[0]}" && pwd)
mkdir -p -- "${positional[1]}" || die "${EXIT_INPUT}" "${positional[1]}: cannot create OUTPUT_DIR; choose a writable place"
output_dir=$(cd "${positional[1]}" && pwd)
log_dir=${log_dir:-${output_dir}/logs/slurm}
mkdir -p -- "${log_dir}"
log_dir=$(cd "${log_dir}" && pwd)

# ---- the participants: participants.tsv's participant_id column, else the sub-* folders
all_labels=()
if [[ -f "${bids_dir}/participants.tsv" ]]; then
    mapfile -t all_labels < <(awk -F'\t' '
        { sub(/\r$/, "") }
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") col = i; next }
        col && $col != "" { id = $col; sub(/^sub-/, "", id); print id }' "${bids_dir}/participants.tsv")
fi
if [[ ${#all_labels[@]} -eq 0 ]]; then
    mapfile -t all_labels < <(find "${bids_dir}" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' -printf '%f\n' \
                              | sed 's/^sub-//' | sort)
fi
[[ ${#all_labels[@]} -gt 0 ]] || die "${EXIT_INPUT}" "${bids_dir}: no participants (no participant_id in participants.tsv and no sub-* folders)"
selected=()
if [[ ${#labels[@]} -gt 0 ]]; then
    for label in "${labels[@]}"; do
        printf '%s\n' "${all_labels[@]}" | grep -qxF -- "${label}" \
            || die "${EXIT_INPUT}" "${bids_dir}: no participant sub-${label}; check --participant-label"
        selected+=("${label}")
    done
else
    selected=("${all_labels[@]}")
fi

list_file="${log_dir}/participants-$(date +%Y%m%dT%H%M%S)-$$.txt"
printf '%s\n' "${selected[@]}" > "${list_file}"
n=${#selected[@]}

participant_cmd=(sbatch --parsable --job-name=deeplight-participant "--array=1-${n}%${throttle}"
                 "--cpus-per-task=${cpus}" "--mem=${mem}" "--time=${time_limit}"
                 "--output=${log_dir}/participant_%A_%a.out" "${sbatch_args[@]}"
                 "${HPC_DIR}/participant.sbatch" "${bids_dir}" "${output_dir}" "${list_file}" "${app_args[@]}")
if ((dry_run)); then
    printf '%q ' "${participant_cmd[@]}"; echo
    array_id=ARRAY_JOB_ID
else
    array_id=$("${participant_cmd[@]}") || die 1 "sbatch of the participant array failed (see the message above)"
    array_id=${array_id%%;*}  # --parsable prints "id[;cluster]"
fi
echo "participant array: job ${array_id}, ${n} task(s) (at most ${throttle} at once), list ${list_file}"

if ((submit_group)); then
    group_cmd=(sbatch --parsable --job-name=deeplight-group "--dependency=after${group_after}:${array_id}"
               "--output=${log_dir}/group_%j.out" "${sbatch_args[@]}"
               "${HPC_DIR}/group.sbatch" "${bids_dir}" "${output_dir}" "${group_args[@]}")
    if ((dry_run)); then
        printf '%q ' "${group_cmd[@]}"; echo
        group_id=GROUP_JOB_ID
    else
        group_id=$("${group_cmd[@]}") || die 1 "sbatch of the group job failed (the array ${array_id} is submitted)"
        group_id=${group_id%%;*}
    fi
    echo "group level: job ${group_id} (after${group_after}:${array_id})"
fi
echo "logs: ${log_dir}; states and exit codes: sacct -j ${array_id} --format=JobID,State,ExitCode"
