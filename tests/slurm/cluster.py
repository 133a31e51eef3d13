"""A real two-node SLURM cluster on this one machine, for the tests of examples/slurm.

    cluster = SlurmCluster.start(directory)   # munged, slurmctld, slurmd node1 + node2
    env = cluster.env()                        # SLURM_CONF=..., for sbatch/squeue/scontrol/scancel
    cluster.stop()                             # every daemon, by its pid

A watchdog process (`python -m tests.slurm.cluster watch PID DIRECTORY`) stops the cluster the
same way when the process that started it dies without stopping it (a pytest killed mid-run), so
no daemon or job outlives its test session.

Debian's packages (slurmctld, slurmd, slurm-client, munge; SLURM 22.05 on Debian 12) are installed
with apt-get when missing and the tests run as root; otherwise `unavailable()` says why not and
the tests skip. Everything the daemons write (config, munge key and socket, state, spool, logs)
stays in `directory`. Both nodes are this host (NodeAddr=127.0.0.1, each slurmd on its own
port); each advertises one GPU that is not there (gres.conf, AutoDetect=off, a plain file), so a
`--gpus-per-node=1` job schedules as on a GPU cluster.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sacct")
NODES = ("node1", "node2")
CPUS_PER_NODE = 16  # advertised (SlurmdParameters=config_overrides): several test jobs share a node


def _missing() -> list:
    sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
    return [d for d in DAEMONS if d != "sacct" and shutil.which(d, path=sbin) is None]


def unavailable() -> Optional[str]:
    """None when a cluster can start here (installing SLURM with apt-get if needed), else why not."""
    if not _missing():
        return None
    if os.geteuid() != 0:
        return f"SLURM is not installed ({', '.join(_missing())} missing) and installing it needs root"
    if shutil.which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(_missing())} missing) and there is no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
                ["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode == 0 and cmd[1] == "install":
            break
    if _missing():
        return f"apt-get could not install {' '.join(PACKAGES)}: {proc.stderr.strip()[-500:]}"
    return None


def free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _which(name: str) -> str:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])) or name


SLURM_CONF = """\
ClusterName=mptest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
GresTypes=gpu
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=3600
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
SchedulerParameters=defer_batch_sched_interval=1,sched_min_interval=100000
NodeName=node1 NodeAddr=127.0.0.1 NodeHostname=localhost Port={port1} CPUs={cpus} Gres=gpu:1 State=UNKNOWN
NodeName=node2 NodeAddr=127.0.0.1 NodeHostname=localhost Port={port2} CPUs={cpus} Gres=gpu:1 State=UNKNOWN
PartitionName=test Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.pids: dict = {}
        self.watchdog: Optional[subprocess.Popen] = None

    # ------------------------------------------------------------------ start and stop

    @classmethod
    def start(cls, directory) -> "SlurmCluster":
        cluster = cls(directory)
        try:
            cluster._start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self) -> None:
        d = self.dir
        for sub in ("state", "log", "munge", "spool/node1", "spool/node2"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        root = Path(__file__).resolve().parents[2]
        with open(d / "log" / "watchdog.log", "ab") as log:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-m", "tests.slurm.cluster", "watch", str(os.getpid()), str(d)],
                cwd=root, env=dict(os.environ, PYTHONPATH=str(root)), start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=log)
        os.chmod(d / "munge", 0o700)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        munged = subprocess.run(
            [_which("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={self.pid_file('munged')}", f"--log-file={d / 'log' / 'munged.log'}",
             f"--seed-file={d / 'munge' / 'munged.seed'}"], capture_output=True, text=True)
        if munged.returncode != 0:
            raise RuntimeError(f"munged did not start: {munged.stderr}")
        self.pids["munged"] = self._read_pid(self.pid_file("munged"))
        (d / "gpu0").write_text("a GPU that is not there\n")
        (d / "gres.conf").write_text(f"AutoDetect=off\nName=gpu File={d / 'gpu0'}\n")
        ctld_port, port1, port2 = free_ports(3)
        self.conf.write_text(SLURM_CONF.format(d=d, ctld_port=ctld_port, port1=port1, port2=port2,
                                               munge_socket=self.munge_socket, cpus=CPUS_PER_NODE))
        env = self.env()
        subprocess.run([_which("slurmctld"), "-f", str(self.conf), "-i"], env=env, check=True)
        self.pids["slurmctld"] = self._read_pid(self.pid_file("slurmctld"))
        for node in NODES:
            self.start_node(node)
        self.wait_idle()

    def start_node(self, node: str) -> None:
        subprocess.run([_which("slurmd"), "-f", str(self.conf), "-N", node], env=self.env(), check=True)
        self.pids[f"slurmd-{node}"] = self._read_pid(self.pid_file(f"slurmd-{node}"))

    def kill_node(self, node: str) -> None:
        pid = self.pids.pop(f"slurmd-{node}", None)
        if pid:
            _kill(pid, signal.SIGKILL)

    def wait_idle(self, timeout: float = 60) -> None:
        end = time.time() + timeout
        while True:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %t").stdout
            states = dict(line.split() for line in out.splitlines() if line.strip())
            if all(states.get(n, "").startswith(("idle", "mix", "alloc")) for n in NODES):
                return
            if time.time() > end:
                raise RuntimeError(f"the nodes did not come up: {states}\n{self.logs()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel every job, stop the daemons, then end any job process left (slurmstepd and its
        tasks outlive slurmd): all by pid, each found by its SLURM_CONF naming this cluster."""
        if self.watchdog is not None:
            self.watchdog.kill()
            self.watchdog.wait()
            self.watchdog = None
        if "slurmctld" in self.pids:
            ids = self.run("squeue", "-h", "-o", "%i").stdout.split()
            if ids:
                self.run("scancel", *ids)
                end = time.time() + 20
                while self.run("squeue", "-h", "-o", "%i").stdout.split() and time.time() < end:
                    time.sleep(0.5)
        for name in sorted(self.pids, key=lambda n: n.startswith("munged")):  # munged last
            _kill(self.pids[name], signal.SIGTERM)
        end = time.time() + 20
        for name, pid in list(self.pids.items()):
            while _alive(pid) and time.time() < end:
                time.sleep(0.2)
            if _alive(pid):
                _kill(pid, signal.SIGKILL)
        self.pids.clear()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = self.processes()
            for pid in left:
                _kill(pid, sig)
            if left and sig == signal.SIGTERM:
                time.sleep(2)

    def pid_file(self, daemon: str) -> Path:
        """Where `daemon` ("munged", "slurmctld", "slurmd-node1", ...) writes its pid (slurm.conf's
        SlurmctldPidFile and SlurmdPidFile say the same)."""
        return self.dir / "munge" / "munged.pid" if daemon == "munged" else self.dir / f"{daemon}.pid"

    def adopt(self) -> None:
        """Learn the daemons' pids from their pid files (the watchdog's view of a running cluster)."""
        for name in ("munged", "slurmctld", *(f"slurmd-{n}" for n in NODES)):
            try:
                self.pids[name] = int(self.pid_file(name).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue

    def processes(self) -> list:
        """Pids of the processes started for this cluster's jobs (their SLURM_CONF is ours)."""
        mine = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if mine in (proc / "environ").read_bytes().split(b"\0"):
                        pids.append(int(proc.name))
                except OSError:
                    continue
        return pids

    @staticmethod
    def _read_pid(path: Path, timeout: float = 20) -> int:
        end = time.time() + timeout
        while time.time() < end:
            try:
                return int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.1)
        raise RuntimeError(f"no pid in {path}")

    # ------------------------------------------------------------------ use

    def env(self, base: Optional[dict] = None) -> dict:
        env = {k: v for k, v in (base if base is not None else os.environ).items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/sbin"])
        return env

    def run(self, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([_which(cmd[0]), *cmd[1:]], env=self.env(), capture_output=True, text=True,
                              check=check)

    def job(self, job_id) -> dict:
        """`scontrol show job` as a dict (JobState, Reason, Restarts, ExitCode, ...); {} if unknown."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id)).stdout
        fields = {}
        for token in out.split():
            if "=" in token:
                k, v = token.split("=", 1)
                fields.setdefault(k, v)
        return fields

    def jobs(self) -> dict:
        """{job id: fields} of every job slurmctld knows (finished ones for MinJobAge)."""
        out = {}
        for line in self.run("scontrol", "-o", "show", "job").stdout.splitlines():
            fields = {}
            for token in line.split():
                if "=" in token:
                    k, v = token.split("=", 1)
                    fields.setdefault(k, v)
            if "JobId" in fields:
                out[int(fields["JobId"])] = fields
        return out

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((self.dir / "log").glob("*.log")))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def watch(parent: int, directory: str) -> None:
    """Wait for `parent` to end; then stop the cluster in `directory` (it is ours to clean up)."""
    while _alive(parent):
        time.sleep(1)
    cluster = SlurmCluster(Path(directory))
    cluster.adopt()
    cluster.stop()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "watch":
        sys.exit("usage: python -m tests.slurm.cluster watch PARENT_PID CLUSTER_DIRECTORY")
    watch(int(sys.argv[2]), sys.argv[3])
