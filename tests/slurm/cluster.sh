# A real single-node SLURM cluster for tests: slurmctld, slurmd and munged
# started by hand (no systemd) with their state in a temporary directory, and
# two fake GPUs (gres File= device nodes). Source this file, then:
#   slurm_supported || exit 0   # prints why not (needs root, Debian, apt-get)
#   slurm_install               # apt-get the packages when missing
#   cluster_start DIR           # DIR: an empty directory for its state
#   ...                         # SLURM_CONF is exported; sbatch, squeue work
#   cluster_stop DIR            # stops the daemons it started, by PID
# Client commands inside jobs (srun) read /etc/slurm/slurm.conf: the
# snakemake jobstep executor drops SLURM_CONF from their environment. So
# cluster_start links it to DIR/slurm.conf (slurm_supported says no when a
# config of another cluster is there). The GPUs' model (gres type) is `fake`.

SLURM_PACKAGES="slurmctld slurmd slurm-client munge"
SLURM_ETC_CONF=/etc/slurm/slurm.conf
SLURM_GPUS=2
SLURM_STATE_PREFIX=conjugacy-slurm.

slurm_supported() {
	if [ "$(id -u)" != 0 ]; then
		echo "needs root (it installs packages and starts SLURM daemons)"
		return 1
	fi
	if ! grep -qs '^ID=debian' /etc/os-release; then
		echo "needs Debian (found: $(grep -s '^PRETTY_NAME=' /etc/os-release | cut -d= -f2))"
		return 1
	fi
	if ! command -v apt-get >/dev/null; then
		echo "needs apt-get"
		return 1
	fi
	if [ -e "$SLURM_ETC_CONF" ] && ! _ours "$SLURM_ETC_CONF"; then
		echo "$SLURM_ETC_CONF belongs to another SLURM cluster on this machine"
		return 1
	fi
}

# A symlink that a previous cluster_start made.
_ours() {
	[ -L "$1" ] && case "$(readlink "$1")" in */"$SLURM_STATE_PREFIX"*) true ;; *) false ;; esac
}

slurm_install() {
	if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
		command -v sbatch >/dev/null && command -v munged >/dev/null; then
		return
	fi
	echo "installing $SLURM_PACKAGES"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $SLURM_PACKAGES >/dev/null
}

cluster_start() {
	local dir=$1 node i
	node=$(hostname -s)
	# A cluster left running by a killed run: stop it first (its PIDs are recorded).
	if _ours "$SLURM_ETC_CONF"; then
		cluster_stop "$(dirname "$(readlink "$SLURM_ETC_CONF")")"
	fi
	mkdir -p "$dir/munge" "$dir/ctld" "$dir/spool"
	chmod 755 "$dir"
	chown munge:munge "$dir/munge"
	mungekey --create --keyfile="$dir/munge/munge.key"
	chown munge:munge "$dir/munge/munge.key"
	for ((i = 0; i < SLURM_GPUS; i++)); do
		if [ ! -e "/dev/fakegpu$i" ]; then
			mknod -m 666 "/dev/fakegpu$i" c 1 3 # a character device, as /dev/null
			echo "/dev/fakegpu$i" >>"$dir/created"
		fi
	done
	cat >"$dir/slurm.conf" <<-EOF
		ClusterName=conjugacy
		SlurmctldHost=$node(127.0.0.1)
		SlurmctldPort=16817
		SlurmdPort=16818
		AuthType=auth/munge
		AuthInfo=socket=$dir/munge/munge.socket
		CredType=cred/munge
		SlurmUser=root
		SlurmdUser=root
		StateSaveLocation=$dir/ctld
		SlurmdSpoolDir=$dir/spool
		SlurmctldPidFile=$dir/slurmctld.pid
		SlurmdPidFile=$dir/slurmd.pid
		SlurmctldLogFile=$dir/slurmctld.log
		SlurmdLogFile=$dir/slurmd.log
		ProctrackType=proctrack/linuxproc
		TaskPlugin=task/none
		MpiDefault=none
		SelectType=select/cons_tres
		SelectTypeParameters=CR_Core_Memory
		JobAcctGatherType=jobacct_gather/none
		AccountingStorageType=accounting_storage/none
		# squeue (no accounting daemon here) sees a finished job this long
		MinJobAge=300
		ReturnToService=2
		# the node may declare more CPUs, memory and GPUs than the machine has
		SlurmdParameters=config_overrides
		GresTypes=gpu
		NodeName=$node NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 Gres=gpu:fake:$SLURM_GPUS State=UNKNOWN
		PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
		PartitionName=gpu Nodes=$node MaxTime=INFINITE State=UP
	EOF
	echo "NodeName=$node Name=gpu Type=fake File=/dev/fakegpu[0-$((SLURM_GPUS - 1))]" >"$dir/gres.conf"
	mkdir -p "$(dirname "$SLURM_ETC_CONF")"
	ln -sfn "$dir/slurm.conf" "$SLURM_ETC_CONF"
	export SLURM_CONF=$dir/slurm.conf

	# Each daemon in a session of its own: a Ctrl-C to the test does not reach
	# them, and cluster_stop ends them after the jobs.
	setsid setpriv --reuid munge --regid munge --init-groups /usr/sbin/munged --foreground \
		--socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
		--pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/seed" \
		--log-file="$dir/munge/munged.log" >"$dir/munged.out" 2>&1 &
	echo $! >"$dir/pids"
	for ((i = 0; i < 50; i++)); do [ -S "$dir/munge/munge.socket" ] && break || sleep 0.1; done
	setsid slurmctld -D -i -f "$dir/slurm.conf" >"$dir/slurmctld.out" 2>&1 &
	echo $! >>"$dir/pids"
	setsid slurmd -D -N "$node" -f "$dir/slurm.conf" >"$dir/slurmd.out" 2>&1 &
	echo $! >>"$dir/pids"
	for ((i = 0; i < 100; i++)); do
		[ "$(sinfo -h -N -o %t 2>/dev/null | sort -u)" = idle ] && return 0
		sleep 0.2
	done
	echo "the cluster did not come up; logs in $dir" >&2
	tail -n 5 "$dir"/*.out >&2
	return 1
}

cluster_stop() {
	local dir=$1 pid i
	[ -f "$dir/pids" ] || return 0
	# Jobs of this cluster still running (a test stopped midway) end first:
	# their job steps would outlive slurmd.
	export SLURM_CONF=$dir/slurm.conf
	if timeout 5 scontrol ping >/dev/null 2>&1; then
		timeout 10 squeue -h -o %i | xargs -r timeout 10 scancel || true
		for ((i = 0; i < 50; i++)); do
			[ -z "$(timeout 5 squeue -h -t R,CG)" ] && break || sleep 0.2
		done
	fi
	# slurmd first, munged last: slurmd hangs on exit without its controller.
	for pid in $(tac "$dir/pids"); do
		kill "$pid" 2>/dev/null || continue
		for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null && sleep 0.2 || break; done
		kill -9 "$pid" 2>/dev/null || true
	done
	rm -f "$dir/pids"
	if [ "$(readlink "$SLURM_ETC_CONF")" = "$dir/slurm.conf" ]; then
		rm -f "$SLURM_ETC_CONF"
	fi
	if [ -f "$dir/created" ]; then
		xargs rm -f <"$dir/created"
		rm -f "$dir/created"
	fi
}
