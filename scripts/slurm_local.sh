#!/usr/bin/env bash
# The study on a real SLURM scheduler: a one-node cluster on this machine, built from Debian packages (issue 25).
#   scripts/slurm_local.sh             the proof, in a copy of the checkout's tracked files: the smoke study through
#                                      `./run_all.sh --executor slurm`; one training cancelled with scancel mid-run (the
#                                      workflow must report it within CANCEL_SECONDS and exit non-zero); the same command
#                                      again (it must resume that training, finish and write the report); then sacct:
#                                      every step a COMPLETED job whose memory request lies above its peak, with a time
#                                      limit. Prints one line per check; exit 0 when all hold, 1 otherwise.
#   scripts/slurm_local.sh run CMD...  only the cluster: start it, run CMD with SLURM_CONF set, stop it
# Needs root: installs slurm-wlm, slurmdbd, munge and mariadb-server with apt-get where missing, then starts munged,
# mariadbd, slurmdbd, slurmctld and slurmd by hand (no systemd) on free loopback ports, with all their state in a
# temporary folder, and at the end stops exactly these five processes by PID and removes the folder.
#   SLURM_LOCAL_KEEP=1   keep the state folder (configs, daemon logs, the workflow's logs) for a look afterwards
#   QSMREP_VENV          the environment the study uses (default: this checkout's .venv, created where missing)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PLUGIN="snakemake-executor-plugin-slurm==2.8.0"  # the version this script was run with (README: the cluster bullet)
CANCEL_SECONDS=120                               # a cancelled job must fail the workflow within this (not a hang)
die() { echo "slurm_local.sh: error: $*" >&2; exit 2; }
say() { echo "==> $*"; }
[ "$(id -u)" = 0 ] || die "needs root (apt-get, and the munge, MariaDB and SLURM daemons it starts)"
[ "${1:-}" != run ] || [ $# -ge 2 ] || die "usage: scripts/slurm_local.sh [run CMD...]"

install_packages() {
  local missing=() p
  for p in slurm-wlm slurmdbd munge mariadb-server; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return
  say "installing ${missing[*]} (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

STATE="" PIDS=() NAMES=() MUNGE_SOCKET=/run/munge/munge.socket.2 MADE_RUN_DIR=0 DEFAULT_CONF=/etc/slurm/slurm.conf MADE_CONF=0
start() {  # start NAME COMMAND...: a daemon in the foreground of a background job; its PID is recorded
  local name="$1"; shift
  "$@" >>"$STATE/log/$name.out" 2>&1 &
  PIDS+=($!) NAMES+=("$name")
}
wait_for() {  # wait_for WHAT COMMAND...: retry COMMAND for up to 60 s
  local what="$1" i; shift
  for i in $(seq 120); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "!!  $what did not come up; last lines of its log:" >&2; tail -n 20 "$STATE/log/"*"$what"* >&2 || true; return 1
}
stop_cluster() {  # cancel what is left, stop the five daemons (newest first) and check that none of them is left
  local i pid left=()
  if [ -n "$STATE" ] && [ -f "$STATE/etc/slurm.conf" ] && [ ${#PIDS[@]} -ge 5 ]; then
    scancel --full --quiet --user root 2>/dev/null || true
    for i in $(seq 60); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 1; done
  fi
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    kill -TERM "${PIDS[i]}" 2>/dev/null || continue
    for _ in $(seq 30); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 1; done
    kill -KILL "${PIDS[i]}" 2>/dev/null && wait "${PIDS[i]}" 2>/dev/null || true
  done
  for i in "${!PIDS[@]}"; do kill -0 "${PIDS[i]}" 2>/dev/null && left+=("${NAMES[i]}:${PIDS[i]}"); done
  pid=$(pgrep -x slurmstepd || true)
  [ ${#left[@]} = 0 ] && [ -z "$pid" ] && say "stopped ${NAMES[*]:-nothing} (PIDs ${PIDS[*]:-none}); none is left" \
    || echo "!!  still running: ${left[*]} ${pid:+slurmstepd $pid}" >&2
  [ "$MADE_RUN_DIR" = 0 ] || rmdir "${MUNGE_SOCKET%/*}" 2>/dev/null || true
  [ "$MADE_CONF" = 0 ] || rm -f "$DEFAULT_CONF"
  if [ -n "$STATE" ]; then [ "${SLURM_LOCAL_KEEP:-0}" = 1 ] && say "state kept in $STATE" || rm -rf "$STATE"; fi
}

free_ports() {  # four free TCP ports on the loopback address
  python3 -c 'import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])'
}

write_configs() {  # slurm.conf and slurmdbd.conf for one node of this machine's CPUs and memory, state under $STATE
  local node; node=$(hostname -s)
  read -r CTLD_PORT SLURMD_PORT DBD_PORT DB_PORT < <(free_ports)
  local hw; hw=$(slurmd -C | head -n 1 | sed "s/^NodeName=[^ ]*//")
  cat > "$STATE/etc/slurm.conf" <<EOF
ClusterName=qsmrep
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
MinJobAge=300
KillWait=10
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$node
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
  chmod 600 "$STATE/etc/slurmdbd.conf"
}

start_cluster() {  # munge → MariaDB → slurmdbd → accounts → slurmctld → slurmd, each waited for
  STATE=$(mktemp -d /tmp/qsmrep-slurm.XXXXXX)
  mkdir -p "$STATE"/{etc,log,run,munge,db,spool/ctld,spool/d}
  chmod 700 "$STATE/munge"
  write_configs
  export SLURM_CONF="$STATE/etc/slurm.conf"
  # the jobstep plugin starts each job's srun without SLURM_CONF, so a node needs the configuration at its default
  # path (as on a real cluster): a link to this one while the cluster runs
  [ ! -e "$DEFAULT_CONF" ] || die "$DEFAULT_CONF exists: a SLURM cluster is configured here already"
  mkdir -p "${DEFAULT_CONF%/*}" && ln -s "$SLURM_CONF" "$DEFAULT_CONF" && MADE_CONF=1
  # SLURM's clients reach munged at its default socket only (AuthInfo=socket= is not used for slurmdbd's connections)
  [ ! -S "$MUNGE_SOCKET" ] || die "$MUNGE_SOCKET exists: another munged runs here; stop it first"
  [ -d "${MUNGE_SOCKET%/*}" ] || { mkdir -p "${MUNGE_SOCKET%/*}"; MADE_RUN_DIR=1; }
  mungekey --create --keyfile="$STATE/munge/munge.key"
  start munged munged --foreground --force --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/seed"
  wait_for munged bash -c "munge -n | unmunge"
  mariadb-install-db --no-defaults --datadir="$STATE/db" --user=root --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1
  local db=(--no-defaults --socket="$STATE/run/mariadb.sock")
  start mariadbd mariadbd "${db[@]}" --datadir="$STATE/db" --user=root --port="$DB_PORT" --bind-address=127.0.0.1 \
    --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
    --pid-file="$STATE/run/mariadbd.pid" --log-error="$STATE/log/mariadbd.log"
  wait_for mariadbd mariadb-admin "${db[@]}" ping
  mariadb "${db[@]}" -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  start slurmdbd slurmdbd -D
  wait_for slurmdbd sacctmgr -n show cluster
  sacctmgr -i add cluster qsmrep >/dev/null
  sacctmgr -i add account qsmrep Cluster=qsmrep Description=qsmrep Organization=qsmrep >/dev/null
  sacctmgr -i add user root DefaultAccount=qsmrep >/dev/null
  start slurmctld slurmctld -D -i
  wait_for slurmctld scontrol ping
  start slurmd slurmd -D
  wait_for slurmd bash -c '[ "$(sinfo -h -o %T)" = idle ]'
  say "SLURM $(sinfo -V | cut -d' ' -f2): node $(hostname -s), $(sinfo -h -o '%c CPUs, %m MB'); state in $STATE"
}

prepare_study() {  # the checkout's files (tracked and new) in $STATE/project, its environment, the plugin
  local py
  py=$(cd "$ROOT" && source scripts/ensure_env.sh >&2 && echo "$PY")
  "$py" -c "import snakemake_executor_plugin_slurm" 2>/dev/null || { [ "${QSMREP_NO_INSTALL:-0}" = 0 ] \
    && "$py" -m pip install --quiet "$PLUGIN"; } || die "$py lacks snakemake-executor-plugin-slurm ($PLUGIN)"
  export QSMREP_VENV="${QSMREP_VENV:-$ROOT/.venv}" PY="$py"
  mkdir "$STATE/project"
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -f "$ROOT/$f" ] && printf '%s\n' "$f"; done \
    | tar -C "$ROOT" -cf - -T - | tar -C "$STATE/project" -xf -
}

study() {  # study LOG [run_all.sh options]: the README's cluster command for the smoke profile, niced, into LOG
  local log="$1"; shift
  (cd "$STATE/project" && nice -n 10 ./run_all.sh --executor slurm --profile smoke "$@") >"$log" 2>&1
}

cancel_one_training() {  # once a training has 3 of its epochs, scancel its job; sets CANCELLED_JOB, CANCELLED_RUN
  local runs="$STATE/project/results/smoke/runs" history job i
  for i in $(seq 900); do
    kill -0 "$RUN" 2>/dev/null || return 1  # the workflow ended first
    for history in "$runs"/*/*/history.csv; do
      [ -f "$history" ] && [ ! -f "${history%/*}/DONE.json" ] && [ "$(wc -l < "$history")" -ge 4 ] || continue
      CANCELLED_RUN=${history%/history.csv}; CANCELLED_RUN=${CANCELLED_RUN#"$runs/"}
      job=$(squeue -h -o '%i %k' | awk -v c="rule_train_wildcards_runs_${CANCELLED_RUN/\//_}" '$2 == c {print $1}')
      [ -n "$job" ] || continue
      scancel "$job"; CANCELLED_JOB=$job; say "cancelled SLURM job $job (training $CANCELLED_RUN, after $(( $(wc -l < "$history") - 1 )) epochs)"
      return 0
    done
    sleep 1
  done
  return 1
}

FAILED=0
check() {  # check WHAT COMMAND...: one line per check
  local what="$1"; shift
  if "$@"; then echo "ok    $what"; else echo "FAIL  $what"; FAILED=1; fi
}
reported_within() {  # reported_within SECONDS LOG TEXT: TEXT appears in LOG within SECONDS (from the call on)
  local i; for i in $(seq "$1"); do grep -qF "$3" "$2" && { say "reported after ${i} s"; return 0; }; sleep 1; done
  return 1
}

sacct_checks() {  # every step of the study a COMPLETED job, each asking for more memory than its peak, with a limit
  sacct -a -n -P -X -o JobIDRaw,Comment,State,ReqMem,Timelimit > "$STATE/sacct_jobs.txt"
  sacct -a -n -P -o JobIDRaw,MaxRSS > "$STATE/sacct_steps.txt"
  "$PY" - "$STATE/dry_run.log" "$STATE/sacct_jobs.txt" "$STATE/sacct_steps.txt" <<'PYEOF'
import re, sys
from collections import defaultdict
UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}  # SLURM's sizes (--mem, ReqMem, MaxRSS) → MiB
def mb(text):
    match = re.fullmatch(r"([\d.]+)([KMGT]?)n?", text)
    return float(match.group(1)) * UNITS[match.group(2) or "M"] if match else 0.0
plan = open(sys.argv[1]).read()
expected = set()
for block in re.split(r"\n(?=(?:local)?rule \w+:)", plan):
    match = re.match(r"rule (\w+):", block)
    if match and match.group(1) != "all":  # the target rule has no command: Snakemake does it in its own process
        wild = re.search(r"wildcards: (.*)", block)
        values = "_".join(v.split("=", 1)[1] for v in wild.group(1).split(", ")) if wild else ""
        expected.add(f"rule_{match.group(1)}" + (f"_wildcards_{values}".replace("/", "_") if values else ""))
jobs = [line.split("|") for line in open(sys.argv[2]).read().splitlines() if line]
peaks = defaultdict(float)  # per job: the sum of its steps' peaks (the batch step's Snakemake and the step it runs)
for raw, rss in (line.split("|") for line in open(sys.argv[3]).read().splitlines() if line):
    peaks[raw.split(".")[0]] += mb(rss) if rss else 0.0
done = {comment: (raw, mb(req), limit) for raw, comment, state, req, limit in jobs if state == "COMPLETED"}
missing = sorted(expected - set(done))
print(f"      {len(expected)} steps planned, {len(done)} COMPLETED SLURM jobs"
      + (f"; never completed: {', '.join(missing)}" if missing else ""))
bad = []
for comment, (raw, request, limit) in sorted(done.items()):
    print(f"      job {raw:>4} {comment[5:]:<45} asked {request:6.0f} MiB, peak {peaks[raw]:6.0f} MiB, limit {limit}")
    if not request > peaks[raw] > 0 or limit in ("", "UNLIMITED", "Partition_Limit"):
        bad.append(comment)
print(f"      memory request above the peak and a time limit: {'every job' if not bad else 'not ' + ', '.join(bad)}")
sys.exit(1 if missing or bad or not expected else 0)
PYEOF
}

trap stop_cluster EXIT
install_packages
start_cluster
if [ "${1:-}" = run ]; then shift; "$@"; exit; fi
prepare_study
say "the smoke study through SLURM ($("$PY" -m snakemake --version | sed 's/^/snakemake /'), $("$PY" -m pip list 2>/dev/null | awk '$1 == "snakemake-executor-plugin-slurm" {print $1, $2}'))"
study "$STATE/dry_run.log" --dry-run
started=$SECONDS
study "$STATE/run1.log" & RUN=$!
check "a training is cancelled with scancel mid-run" cancel_one_training
check "the workflow reports the cancelled job within $CANCEL_SECONDS s" \
  reported_within "$CANCEL_SECONDS" "$STATE/run1.log" "SLURM-job '${CANCELLED_JOB:-none}' failed"
RC=0; wait "$RUN" || RC=$?
check "run 1 exits non-zero (exit $RC) after $(( SECONDS - started )) s, the other steps finished" test "$RC" != 0
started=$SECONDS; RC=0; study "$STATE/run2.log" || RC=$?
check "the same command again exits 0 (after $(( SECONDS - started )) s)" test "$RC" = 0
check "it resumed the cancelled training $CANCELLED_RUN" grep -q "resuming .*${CANCELLED_RUN:-none} from epoch" \
  "$STATE/project/results/smoke/notebooks/train_runs_${CANCELLED_RUN/\//_}.log"
check "it wrote the report" test -s "$STATE/project/results/smoke/report.html"
started=$SECONDS; RC=0; study "$STATE/run3.log" || RC=$?
check "a third run does nothing (exit $RC, $(( SECONDS - started )) s)" grep -q "Nothing to be done" "$STATE/run3.log"
check "sacct: every step ran as a SLURM job, asking for more memory than its peak, with a time limit" sacct_checks
[ "$FAILED" = 0 ] || { echo "!!  some checks failed; the workflow's logs: $STATE/run*.log (SLURM_LOCAL_KEEP=1 keeps them)" >&2; exit 1; }
say "all checks passed"
