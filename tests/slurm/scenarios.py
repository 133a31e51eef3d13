"""The examples/slurm scenarios on a real two-node SLURM, submitted together and driven to the end.

Every scenario is one `bash examples/slurm/submit_two_stage.sh` (patch stage -> convert -> token
stage) on NODES=2 with one process per node, in its own run directory, with the same tiny config;
the driver then does to it what its name says, while the others run:

    straight   nothing: the reference chain (it asks for one (fake) GPU per node, the others none)
    signal     SLURM's time-limit warning to the patch job's batch shell mid-stage
               (scancel --batch --signal=USR1 JOB, what --signal=B:USR1@300 does at its time)
    preempt    SIGTERM to the patch job's running step (scancel --signal=TERM JOB)
    failure    DATA_PATH is a corrupt data file
    node_lost  the training processes on node2 killed (SIGKILL) after a checkpoint of this run
    clock      --time=2 and SAVE_MARGIN_MINS=1.75: the patch job stops itself on its own clock
               15 s after its processes started; its requeued run gets a 10-minute limit to
               finish. It runs first, alone until that requeue.

A requeued job is moved to start now (scontrol update JobId=N StartTime=now), REQUEUE_SETTLE
seconds after its requeue and once no process of its previous run is left, instead of after
its ~150 s BeginTime. `run_scenarios` returns {name: ScenarioRun} once every job has ended.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from tests import ROOT
from tests.slurm.cluster import SlurmCluster, free_ports

SLURM = ROOT / "examples" / "slurm"
VENV_BIN = Path(sys.executable).parent
ITERS = 160         # the whole two-stage budget: 80 patch steps, 80 token steps
CLOCK_ITERS = 2100  # the clock scenario: 2000 patch steps, more than one 15-second window holds
CLOCK_FRACTION = 2000 / 2100
INTERRUPT_AT = 6    # the patch step after which signal/preempt act
REQUEUE_SETTLE = 10  # seconds between a requeue and its early start (SLURM's own wait: ~150 s)
SAVE_EVERY = 20     # node_lost: a checkpoint every 20 steps; node2's processes die 2 steps after one
SCENARIOS = ("straight", "signal", "preempt", "failure", "node_lost", "clock")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}

TINY_CONFIG = """\
model:
  preset: tiny
  num_layers: 2
data:
  split: "90,10,0"
optim:
  lr: 3.0e-3
  min_lr: 3.0e-4
  lr_warmup_iters: 2
train:
  micro_batch_size: 2
  global_batch_size: 4
  seq_length: 64
  patch_seq_length: 64
  train_iters: {iters}
  patch_size: 4
  patch_fraction: {fraction}
  eval_iters: 1
  seed: 7
logging:
  log_interval: 1
"""


class ScenarioRun:
    def __init__(self, name: str, directory: Path, cluster: SlurmCluster):
        self.name, self.dir, self.cluster = name, directory, cluster
        self.save = directory / "run"
        self.log_dir = Path(f"{self.save}.logs")
        self.iters = CLOCK_ITERS if name == "clock" else ITERS
        self.jobs: dict = {}          # patch/convert/token -> job id
        self.info: dict = {}          # job id -> final `scontrol show job` fields
        self.events: list = []        # (seconds since submit, what the driver did)
        self.requeued: dict = {}      # "start now: ..." -> when the requeue was first seen
        self.submit_out = ""
        self.bad_data = ""
        self.killed_at = 0
        self.t0 = 0.0
        self.seconds = 0.0

    # ------------------------------------------------------------------ submit

    def submit(self, data_prefix: str, tokenizer: str, port: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "tiny.yaml"
        fraction = CLOCK_FRACTION if self.name == "clock" else 0.5
        config.write_text(TINY_CONFIG.format(iters=self.iters, fraction=fraction))
        knobs = dict(CONFIG=str(config), DATA_PATH=data_prefix, TOKENIZER=tokenizer, SAVE=str(self.save),
                     NODES="2", GPUS_PER_NODE="0", CPUS_PER_TASK="1", EXCLUSIVE="0",
                     MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        if self.name == "straight":
            knobs["GPUS_PER_NODE"], knobs["PROCS_PER_NODE"] = "1", "1"
        if self.name == "failure":
            self.bad_data = str(self.dir / "corrupt_text_document")
            Path(self.bad_data + ".bin").write_bytes(os.urandom(1000))
            Path(self.bad_data + ".idx").write_bytes(b"not an index" + os.urandom(100))
            knobs["DATA_PATH"] = self.bad_data
        if self.name == "node_lost":
            knobs["SAVE_INTERVAL"] = str(SAVE_EVERY)
        if self.name == "clock":  # SLURM's warning 5 s before the limit: long after the clock's exit
            knobs.update(SBATCH_EXTRA="--time=2 --signal=B:USR1@5", SAVE_MARGIN_MINS="1.75")
        env = self.cluster.env()
        env.update(knobs, PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", PYTHONPATH=str(ROOT), DRY_RUN="")
        self.env = env
        proc = subprocess.run(["bash", "-x", str(SLURM / "submit_two_stage.sh")], env=env, cwd=self.dir,
                              capture_output=True, text=True)
        self.submit_out = proc.stdout + proc.stderr
        self.t0 = time.time()
        match = re.search(r"patch stage (\d+) -> convert (\d+) -> token stage (\d+)", proc.stdout)
        assert proc.returncode == 0 and match, self.submit_out
        self.jobs = dict(zip(("patch", "convert", "token"), map(int, match.groups())))

    # ------------------------------------------------------------------ drive

    def note(self, what: str) -> None:
        self.events.append((round(time.time() - self.t0, 1), what))

    def interrupt(self) -> None:
        """Do to the patch job what the scenario's name says, once, when its training is there."""
        if self.name not in ("signal", "preempt", "node_lost") or any(e[1].startswith("interrupt") for e in self.events):
            return
        patch = self.jobs["patch"]
        steps = train_steps(self.save, "patch")
        ckpt = checkpoint_step(self.save / "patch")
        ready = max(steps, default=0) >= INTERRUPT_AT
        if self.name == "node_lost":
            ready = ckpt >= SAVE_EVERY and max(steps, default=0) >= ckpt + 2
        if not ready:
            return
        if self.name == "signal":
            self.cluster.run("scancel", "--batch", "--signal=USR1", str(patch), check=True)
        elif self.name == "preempt":
            self.cluster.run("scancel", "--signal=TERM", str(patch), check=True)
        else:
            pids = job_processes(patch, "node2")
            if not pids:
                return  # between two looks: try again
            for pid in pids:
                _kill(pid, signal.SIGKILL)
            self.killed_at = max(steps)
        self.note(f"interrupt: {self.name} at patch step {max(steps)} (checkpoint {ckpt})")

    def schedule(self, state: dict) -> None:
        """Start a requeued job now rather than at its BeginTime (the clock scenario: for 10 min),
        once its previous run is gone: no process of the job left and REQUEUE_SETTLE seconds since
        the requeue showed (the new run's steps reuse the old ids; slurmd must have finished
        with the old ones, or it cancels the new step 0 as the old one)."""
        for kind, job in self.jobs.items():
            fields = state.get(job, {})
            restarts = int(fields.get("Restarts", 0) or 0)
            if fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime" and restarts:
                key = f"start now: {kind} restart {restarts}"
                seen = self.requeued.setdefault(key, time.time())
                if time.time() - seen < REQUEUE_SETTLE or job_processes(job):
                    continue
                if key not in [e[1] for e in self.events]:
                    if self.name == "clock":
                        self.cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")
                    self.cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
                    self.note(key)

    # ------------------------------------------------------------------ results

    def job_info(self, kind: str) -> dict:
        return self.info.get(self.jobs[kind], {})

    def states(self) -> list:
        return [self.job_info(k).get("JobState") for k in ("patch", "convert", "token")]

    def reasons(self) -> list:
        return [self.job_info(k).get("Reason") for k in ("patch", "convert", "token")]

    def restarts(self) -> list:
        return [int(self.job_info(k).get("Restarts", 0) or 0) for k in ("patch", "convert", "token")]

    def started(self, kind: str) -> str:
        return self.job_info(kind).get("StartTime", "")

    def ended_at(self, kind: str) -> str:
        return self.job_info(kind).get("EndTime", "")

    def ended(self, kind_or_state):  # ended(state): all jobs over (driving); ended(kind): its EndTime
        if isinstance(kind_or_state, dict):
            return all(kind_or_state.get(j, {}).get("JobState") in ENDED for j in self.jobs.values())
        return self.ended_at(kind_or_state)

    def log(self, kind: str) -> str:
        path = self.log_dir / f"slurm-{kind}-{self.jobs[kind]}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def losses(self, stage: str) -> dict:
        return {r["step"]: r["loss"] for r in records(self.save) if r.get("kind") == "train" and r.get("stage") == stage}

    def stopped_at(self) -> int:
        match = re.search(r"patch stage: step (\d+) of \d+, stopped early", self.log("patch"))
        return int(match[1]) if match else -1

    def assert_complete(self) -> None:
        half = round(self.iters * (CLOCK_FRACTION if self.name == "clock" else 0.5))
        assert (self.save / "compute.json").is_file(), self.transcript()
        for d in ("patch", "patch_weights", "token"):
            assert (self.save / d / "latest_checkpointed_iteration.txt").is_file(), (d, self.transcript())
        assert train_steps(self.save, "patch") == list(range(1, half + 1)), self.transcript()
        assert train_steps(self.save, "token") == list(range(1, self.iters - half + 1)), self.transcript()

    def transcript(self) -> str:
        lines = [f"scenario {self.name}: {self.seconds:.0f} s; jobs {self.jobs}"]
        for kind in ("patch", "convert", "token"):
            i = self.job_info(kind)
            lines.append(f"  {kind} {self.jobs.get(kind)}: {i.get('JobState')} reason={i.get('Reason')} "
                         f"restarts={i.get('Restarts')} exit={i.get('ExitCode')} "
                         f"start={i.get('StartTime')} end={i.get('EndTime')}")
        lines += [f"  +{t}s {what}" for t, what in self.events]
        for kind in ("patch", "convert", "token"):
            lines.append(f"--- log of the {kind} job\n{self.log(kind)[-4000:]}")
        return "\n".join(lines)


def records(save: Path) -> list:
    path = save / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line being written
    return out


def train_steps(save: Path, stage: str) -> list:
    return [r["step"] for r in records(save) if r.get("kind") == "train" and r.get("stage") == stage]


def checkpoint_step(stage_dir: Path) -> int:
    try:
        return int((stage_dir / "latest_checkpointed_iteration.txt").read_text().strip())
    except (OSError, ValueError):
        return 0


def job_processes(job_id: int, node: Optional[str] = None) -> list:
    """Pids of the job's task processes on `node` (their environment says SLURMD_NODENAME=node),
    or on any node and in any step, its batch shell included, when `node` is None."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (proc / "environ").read_bytes().decode(errors="replace")
                       .split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") != str(job_id):
            continue
        if node is None or (env.get("SLURMD_NODENAME") == node
                            and env.get("SLURM_STEP_ID", "batch") not in ("batch", "4294967294")):
            pids.append(int(proc.name))
    return pids


def _kill(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def run_scenarios(directory: Path, names=SCENARIOS, timeout: float = 1200) -> dict:
    """Start a cluster in `directory`, submit every scenario, drive them to the end; stop the cluster."""
    from tests.distributed.train_common import make_corpus

    directory = Path(directory)
    prefix, tokenizer = make_corpus(str(directory / "data"))
    cluster = SlurmCluster.start(directory / "cluster")
    try:
        runs = {name: ScenarioRun(name, directory / name, cluster) for name in names}
        ports = free_ports(len(runs))
        t0 = time.time()
        # The clock scenario first, alone until its first run has requeued itself: that run has
        # 2 minutes in all, which a start among a dozen processes importing torch on a small
        # machine could eat up. (The machine's cores are busy with it meanwhile.)
        order = sorted(runs.values(), key=lambda r: r.name != "clock")
        for run, port in zip(order, ports):
            run.submit(prefix, tokenizer, port)
            while run.name == "clock" and time.time() - t0 < 180:
                fields = cluster.job(run.jobs["patch"])
                if int(fields.get("Restarts", 0) or 0) or fields.get("JobState") in ENDED:
                    break
                time.sleep(0.5)
        pending = dict(runs)
        looked = 0.0
        while pending:
            for run in pending.values():
                run.interrupt()
            time.sleep(0.1)
            if time.time() - looked < 1:
                continue
            looked = time.time()
            state = cluster.jobs()
            for name, run in list(pending.items()):
                if run.ended(state):
                    run.seconds = time.time() - run.t0
                    run.info = {j: state[j] for j in run.jobs.values()}
                    del pending[name]
                else:
                    run.schedule(state)
            if time.time() - t0 > timeout:
                for run in pending.values():
                    run.info = {j: state.get(j, {}) for j in run.jobs.values()}
                stuck = "\n\n".join(r.transcript() for r in pending.values())
                raise AssertionError(f"scenarios still running after {timeout:.0f} s:\n{stuck}\n{cluster.logs()}")
        print("\n".join(f"slurm scenario {n}: {r.seconds:.0f} s" for n, r in runs.items()))
        return runs
    finally:
        cluster.stop()
