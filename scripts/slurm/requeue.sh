# Sourced by the batch scripts in this folder: run a job step, pass Slurm's SIGTERM on, requeue after preemption.
#
#   source scripts/slurm/requeue.sh
#   run_and_requeue OUTPUT_DIR srun ... torchrun ... pretrain/run.py --run.output_dir OUTPUT_DIR --run.resume auto
#
# With `#SBATCH --signal=B:TERM@<seconds>`, Slurm sends SIGTERM to this batch shell that long before the time limit.
# It goes on to the job step (srun forwards it to its tasks; each torchrun agent to its workers); the workers finish
# their step, save a checkpoint, and rank 0 writes OUTPUT_DIR/PREEMPTED once the checkpoint is complete. The job is
# requeued when that marker is newer than this job's start, whatever the exit code: the torchrun agent exits 1 after
# a SIGTERM even when every worker saved. The requeued job resumes from the newest complete checkpoint.
# An array task requeues only itself: SLURM_JOB_ID is the task's own job id.

# Slurm >= 22.05: srun no longer inherits the batch's --cpus-per-task; without this each task gets one CPU.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK}"
fi
# How long a torchrun agent lets its workers finish their step and save after SIGTERM before it SIGKILLs them
# (torch's default is 30 s, too short for a base-size checkpoint on a shared file system). Keep it below the
# --signal lead time.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-240}"
# A fresh rendezvous store for every torchrun restart (--max-restarts): with the store torch shares across restarts
# by default, a restarted worker group can fail to connect or hang (pytorch/pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

run_and_requeue() {
    local out=$1
    shift
    local started rc=0
    started=$(date +%s)
    "$@" &
    local pid=$!
    # shellcheck disable=SC2064  # the pid is fixed now
    trap "echo 'SIGTERM: the run saves a checkpoint, then stops'; kill -TERM ${pid} 2>/dev/null" TERM
    wait "${pid}" || rc=$?
    while kill -0 "${pid}" 2>/dev/null; do  # the trap interrupted `wait`: the step is still saving
        rc=0
        wait "${pid}" || rc=$?
    done
    trap - TERM
    local marker="${out}/PREEMPTED"
    if [ -f "${marker}" ] && [ "$(stat -c %Y "${marker}")" -ge "${started}" ]; then
        echo "preempted after a complete checkpoint: $(cat "${marker}")"
        echo "requeueing job ${SLURM_JOB_ID}"
        scontrol requeue "${SLURM_JOB_ID}"
    fi
    return "${rc}"
}
