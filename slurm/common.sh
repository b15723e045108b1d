# shellcheck shell=bash
# Sourced by the slurm/*.sbatch scripts (not run on its own): environment, rendezvous address, preemption handling.
#
# Environment it reads (all optional):
#   E2EREC_ROOT      the e2erec checkout                     (default: the submit directory, $SLURM_SUBMIT_DIR)
#   E2EREC_SLURM_DIR this folder (default: $E2EREC_ROOT/slurm; an installed wheel's is e2erec/slurm/)
#   E2EREC_PYTHON    the Python with e2erec installed         (default: $E2EREC_ROOT/.venv/bin/python, else python3)
#   E2EREC_CONFIG    run config name or YAML path            (default: default)
#   E2EREC_OVERRIDES extra key=value overrides, space-separated (the script's own arguments are overrides too)
#   E2EREC_NPROC_PER_NODE  processes per node                (default: GPUs on the node; 1 without GPUs)
#   E2EREC_MAX_REQUEUES    stop requeueing after this many restarts (default 20)
# Without GPUs it runs in CPU mode: gloo, DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1 per process unless set.

# The trainer's exit status after a signal-triggered checkpoint (e2erec.train.engine.EXIT_PREEMPTED).
EXIT_PREEMPTED=85

log() { echo "[e2erec slurm $(date +%H:%M:%S)] $*" >&2; }

E2EREC_ROOT="${E2EREC_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
cd "$E2EREC_ROOT" || { log "E2EREC_ROOT=$E2EREC_ROOT does not exist"; exit 2; }
if [ -z "${E2EREC_PYTHON:-}" ]; then
  if [ -x "$E2EREC_ROOT/.venv/bin/python" ]; then E2EREC_PYTHON="$E2EREC_ROOT/.venv/bin/python"; else E2EREC_PYTHON=python3; fi
fi
export E2EREC_ROOT E2EREC_PYTHON
E2EREC_CONFIG="${E2EREC_CONFIG:-default}"

# Rendezvous: the first node of the allocation, and a per-job port (another job on the host may hold 29500).
MASTER_ADDR="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n1)"
MASTER_PORT="${MASTER_PORT:-$(( 29500 + ${SLURM_JOB_ID:-0} % 1000 ))}"
export MASTER_ADDR MASTER_PORT

GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:-0}"
if [ "$GPUS_PER_NODE" -gt 0 ] 2>/dev/null; then
  E2EREC_NPROC_PER_NODE="${E2EREC_NPROC_PER_NODE:-$GPUS_PER_NODE}"
else
  # CPU mode (testing, laptops in a local Slurm): gloo and one thread per rank, or 2 cores thrash.
  E2EREC_NPROC_PER_NODE="${E2EREC_NPROC_PER_NODE:-1}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" DS_ACCELERATOR=cpu
fi
NNODES="${SLURM_NNODES:-1}"

# Overrides from the environment, then the script's arguments (so `sbatch script.sbatch model=small` works).
# shellcheck disable=SC2034  # used by the scripts that source this file
read -r -a ENV_OVERRIDES <<<"${E2EREC_OVERRIDES:-}"

log "job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): ${NNODES} node(s) x ${E2EREC_NPROC_PER_NODE} process(es)," \
    "master ${MASTER_ADDR}:${MASTER_PORT}, python ${E2EREC_PYTHON}"

# ---------------------------------------------------------------------------------------------------------------
# Preemption: sbatch's --signal=B:USR1@SECONDS signals this batch shell before the time limit (or an admin runs
# `scancel --signal=USR1 --batch JOB`). The shell passes USR1 to the job steps; the trainer checkpoints at the next
# step boundary and exits with EXIT_PREEMPTED; the job then requeues itself and resumes with train.resume=auto.

PREEMPTED=0
on_preempt() {
  PREEMPTED=1
  log "preemption signal: asking the training step to checkpoint"
  # Without --batch, scancel signals the job's steps (every process in them), not this shell.
  scancel --signal=USR1 "$SLURM_JOB_ID" || true
}

# Launchers (torchrun, the DeepSpeed launcher) run under this wrapper so they ignore USR1: the ranks get the signal
# from Slurm directly and checkpoint, while a launcher that died of it would take the ranks down mid-checkpoint
# (torchrun's own forwarding kills ranks that take longer than 30 s). The ranks install their own handler.
# shellcheck disable=SC2016,SC2034
LAUNCHER_IGNORING_USR1=(bash -c 'trap "" USR1; exec "$@"' _)

# run_step CMD...: run a job step in the background so the trap can fire, wait for its real exit status, then
# requeue the job when it checkpointed on a signal. Returns (exits with) the step's status otherwise.
run_step() {
  trap on_preempt USR1 TERM
  "$@" &
  local pid=$! rc=0
  wait "$pid" && rc=0 || rc=$?
  # `wait` also returns (with 128+signal) when a trapped signal arrives while the step still runs: wait again.
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" && rc=0 || rc=$?; done
  if [ "$rc" -gt 128 ]; then
    # The step may have ended during the trap: bash still holds its real status (127 = none left to report).
    local again=0
    wait "$pid" && again=0 || again=$?
    [ "$again" -ne 127 ] && rc=$again
  fi
  trap - USR1 TERM
  if [ "$rc" -eq "$EXIT_PREEMPTED" ] || { [ "$PREEMPTED" -eq 1 ] && [ "$rc" -ne 0 ]; }; then
    local restarts="${SLURM_RESTART_COUNT:-0}"
    if [ "$restarts" -ge "${E2EREC_MAX_REQUEUES:-20}" ]; then
      log "checkpointed (exit $rc) but already restarted $restarts times: not requeueing"
      exit "$rc"
    fi
    log "checkpointed (exit $rc): requeueing job $SLURM_JOB_ID; it resumes with train.resume=auto"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  log "step finished with exit status $rc"
  exit "$rc"
}
