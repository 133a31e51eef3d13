"""examples/slurm, on a real SLURM (two slurmd nodes on this machine, tests/slurm/cluster.py).

- The scripts never override the YAML config: a knob passes its flag only when it is set (these
  run the stage scripts outside SLURM, with `srun`/`scontrol`/`squeue` that only record).
- The whole chain through examples/slurm/submit_two_stage.sh on 2 nodes, 1 process per node, a
  tiny model, for every way a job can end: straight through; SLURM's time-limit warning signal;
  a preemption's SIGTERM; a real failure; a node's processes killed; a time limit met by the
  job's own clock (--exit-duration-in-mins). The scenarios run side by side on the cluster (one
  module fixture submits them all); each test then checks one.

A requeued job waits for its BeginTime (about 150 s after the requeue). To keep the suite short,
the fixture moves it to now (`scontrol update JobId=N StartTime=now`) once the requeue shows.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import ROOT

SLURM = ROOT / "examples" / "slurm"
VENV_BIN = Path(sys.executable).parent

# ----------------------------------------------------------------------------- the config is the truth

RECORD = """#!/bin/bash
# {name} that records its arguments (srun: succeeds without running anything).
printf '%s\\0' "$@" > "$RECORD_DIR/{name}.$(date +%s%N)"
case "{name} $1 $2" in
    "scontrol show hostnames") echo node1 ;;
    "scontrol -o show") echo "NodeName=node1 Arch=x86_64 NodeAddr=10.1.2.3 NodeHostName=n1" ;;
    "squeue "*) echo "${{FAKE_TIME_LEFT:-1-00:00:00}}" ;;
esac
"""


def recording_env(tmp_path) -> dict:
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    for name in ("srun", "scontrol", "squeue", "scancel"):
        (bin_dir / name).write_text(RECORD.format(name=name))
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT),
               RECORD_DIR=str(record), SLURM_JOB_ID="7", SLURM_JOB_NODELIST="node[1-2]",
               SLURM_JOB_NUM_NODES="1", SLURM_SUBMIT_DIR=str(ROOT))
    return env


def calls(env, name: str) -> list:
    files = sorted(Path(env["RECORD_DIR"]).glob(f"{name}.*"), key=lambda p: int(p.name.split(".")[-1]))
    return [p.read_bytes().decode().split("\0")[:-1] for p in files]


REQUIRED = {"DATA_PATH": "0.5 /d/a 0.5 /d/b", "TOKENIZER": "/t.model"}
KNOB_FLAGS = {  # knob: (flag, value, config section, field)
    "TP": ("--tensor-model-parallel-size", "4", "parallel", "tensor_model_parallel_size"),
    "PP": ("--pipeline-model-parallel-size", "2", "parallel", "pipeline_model_parallel_size"),
    "K": ("--patch-size", "8", "train", "patch_size"),
    "LAMBDA": ("--patch-fraction", "0.5", "train", "patch_fraction"),
    "TRAIN_ITERS": ("--train-iters", "1000", "train", "train_iters"),
    "MBS": ("--micro-batch-size", "1", "train", "micro_batch_size"),
    "GBS": ("--global-batch-size", "512", "train", "global_batch_size"),
    "SEQ_LEN": ("--seq-length", "1024", "train", "seq_length"),
    "PATCH_SEQ_LEN": ("--patch-seq-length", "8192", "train", "patch_seq_length"),
    "LR": ("--lr", "0.0002", "optim", "lr"),
    "MIN_LR": ("--min-lr", "2e-05", "optim", "min_lr"),
    "WARMUP": ("--lr-warmup-iters", "100", "optim", "lr_warmup_iters"),
    "SEED": ("--seed", "7", "train", "seed"),
    "SAVE_INTERVAL": ("--save-interval", "50", "checkpoint", "save_interval"),
    "EVAL_INTERVAL": ("--eval-interval", "60", "train", "eval_interval"),
    "LOG_INTERVAL": ("--log-interval", "5", "logging", "log_interval"),
}


def run_stage(script: str, env: dict, tmp_path, **knobs):
    """(tools/pretrain.py arguments, torchrun options, output) of one run of a stage script."""
    env = dict(env, SAVE=str(tmp_path / "run"), **REQUIRED, **knobs)
    env.pop("TRAIN_TOKENS", None)
    if script == "token_stage.sbatch":
        env["INIT"] = ""
    for old in Path(env["RECORD_DIR"]).glob("srun.*"):
        old.unlink()
    proc = subprocess.run(["bash", str(SLURM / script)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (call,) = [c for c in calls(env, "srun") if "tools/pretrain.py" in c]
    i = call.index("tools/pretrain.py")
    return call[i + 1:], call[call.index("torchrun") + 1:i], proc.stdout + proc.stderr


def parsed(args):
    from megatron_patch.training.config import parse_config

    return parse_config(args)


@pytest.mark.parametrize("script", ["patch_stage.sbatch", "token_stage.sbatch"])
def test_the_scripts_do_not_override_the_config(script, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    env = recording_env(tmp_path)
    args, torchrun, _ = run_stage(script, dict(env, CONFIG="examples/configs/2_7b.yaml"), tmp_path)
    stage = script.split("_")[0]
    save = str(tmp_path / "run")
    # A day left, less the 10-minute save margin: the clock exit comes after the config.
    assert args == ["--stage", stage, "--data-path", "0.5", "/d/a", "0.5", "/d/b", "--tokenizer-model",
                    "/t.model", "--save", save, "--load", save, "--exit-signal-handler",
                    "--config", "examples/configs/2_7b.yaml", "--exit-duration-in-mins", "1430.00"]
    # No GPU in the job: one process per node; the rendezvous is the first node's NodeAddr.
    assert "--nproc-per-node=1" in torchrun and "--rdzv-endpoint=10.1.2.3:29500" in torchrun
    cfg = parsed(args)  # the config's values stand: TP=2, micro-batch 2, its budget and recipe
    assert cfg.parallel.tensor_model_parallel_size == 2 and cfg.train.micro_batch_size == 2
    assert cfg.train.train_tokens == 360_000_000_000 and cfg.train.patch_size == 4

    tp4, _, _ = run_stage(script, dict(env, CONFIG="examples/configs/2_7b.yaml", TP="4"), tmp_path / "tp")
    assert tp4[tp4.index("--tensor-model-parallel-size"):][:2] == ["--tensor-model-parallel-size", "4"]
    assert [a for a in tp4 if a.startswith("--")] == [a for a in args if a.startswith("--")][:-1] + [
        "--tensor-model-parallel-size", "--exit-duration-in-mins"]


def test_every_knob_passes_exactly_its_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    env = recording_env(tmp_path)
    knobs = {k: v[1] for k, v in KNOB_FLAGS.items()}
    per_stage = {}
    for script in ("patch_stage.sbatch", "token_stage.sbatch"):
        args, _, _ = run_stage(script, dict(env, CONFIG="", EXTRA_ARGS="--model tiny --num-layers 2",
                                            FAKE_TIME_LEFT="UNLIMITED"), tmp_path / script, **knobs)
        assert "--config" not in args and args[-4:] == ["--model", "tiny", "--num-layers", "2"]
        per_stage[script] = [a for a in args if a not in (str(tmp_path / script / "run"), "patch", "token")]
        cfg = parsed(args)
        for knob, (flag, value, section, name) in KNOB_FLAGS.items():
            assert args.count(flag) == 1 and args[args.index(flag) + 1] == value, knob
            assert float(getattr(getattr(cfg, section), name)) == float(value), knob
    assert per_stage["patch_stage.sbatch"] == per_stage["token_stage.sbatch"]  # the same recipe


@pytest.mark.parametrize("left, margin, expect", [
    ("2-00:00:00", "10", "2870.00"), ("3:30:00", "10", "200.00"), ("14:30", "4.5", "10.00"),
    ("2:00", "1.5", "0.50"), ("9:00", "10", None), ("UNLIMITED", "10", None)])
def test_the_clock_exit_is_the_time_left_less_the_margin(tmp_path, monkeypatch, left, margin, expect):
    monkeypatch.chdir(ROOT)
    env = recording_env(tmp_path)
    args, _, out = run_stage("patch_stage.sbatch", dict(env, CONFIG="", FAKE_TIME_LEFT=left,
                                                        SAVE_MARGIN_MINS=margin), tmp_path)
    got = args[args.index("--exit-duration-in-mins") + 1] if "--exit-duration-in-mins" in args else None
    assert got == expect, out
    assert (squeue := calls(env, "squeue")) and squeue[0] == ["-h", "-j", "7", "-o", "%L"]
    # A duration the user gives wins over the computed one.
    mine, _, _ = run_stage("patch_stage.sbatch", dict(env, CONFIG="", FAKE_TIME_LEFT=left,
                                                      EXTRA_ARGS="--exit-duration-in-mins 3"), tmp_path / "mine")
    assert mine.count("--exit-duration-in-mins") == 1 and mine[-1] == "3"


def test_gpus_processes_cpus_and_exclusive(tmp_path):
    """What submit_two_stage.sh asks SLURM for (DRY_RUN prints the sbatch commands)."""
    env = recording_env(tmp_path)
    env.update(REQUIRED, SAVE=str(tmp_path / "run"), DRY_RUN="1", SBATCH_EXTRA="--account=abc")

    def submitted(**knobs):
        proc = subprocess.run(["bash", str(SLURM / "submit_two_stage.sh")], env=dict(env, **knobs),
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return [line.split() for line in proc.stderr.splitlines() if line.startswith("sbatch ")]

    patch, convert, token = submitted(NODES="4")
    assert patch[-1].endswith("patch_stage.sbatch") and token[-1].endswith("token_stage.sbatch")
    for job in (patch, token):  # a GPU cluster by default: 8 GPUs, whole nodes
        assert {"--nodes=4", "--gpus-per-node=8", "--exclusive", "--account=abc"} <= set(job)
    assert not any(o.startswith(("--gpus", "--exclusive", "--cpus")) for o in convert)
    assert "--kill-on-invalid-dep=yes" in convert and "--kill-on-invalid-dep=yes" in token
    patch, convert, token = submitted(GPUS_PER_NODE="0", CPUS_PER_TASK="2", EXCLUSIVE="0")
    assert not any(o.startswith(("--gpus", "--exclusive")) for o in patch + token)
    assert "--cpus-per-task=2" in patch and "--cpus-per-task=2" in convert
    refused = subprocess.run(["bash", str(SLURM / "submit_two_stage.sh")], env=dict(env, EXCLUSIVE="yes"),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "EXCLUSIVE=yes" in refused.stderr


def test_processes_per_node(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    env = recording_env(tmp_path)
    for knobs, procs in (({"GPUS_PER_NODE": "8"}, "8"), ({"GPUS_PER_NODE": "0"}, "1"),
                         ({"SLURM_GPUS_ON_NODE": "4"}, "4"), ({"GPUS_PER_NODE": "0", "PROCS_PER_NODE": "6"}, "6")):
        _, torchrun, out = run_stage("patch_stage.sbatch", dict(env, **knobs), tmp_path / procs)
        assert f"--nproc-per-node={procs}" in torchrun, (knobs, out)


def test_submit_refuses_a_launch_without_budget(tmp_path):
    env = recording_env(tmp_path)
    env.update(REQUIRED, SAVE=str(tmp_path / "run"), CONFIG=str(tmp_path / "no_budget.yaml"))
    Path(env["CONFIG"]).write_text("model:\n  preset: 370m\ntrain:\n  micro_batch_size: 4\n")
    proc = subprocess.run(["bash", str(SLURM / "submit_two_stage.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "TRAIN_TOKENS" in proc.stderr
    missing = subprocess.run(["bash", str(SLURM / "submit_two_stage.sh")], env=dict(env, CONFIG="nope.yaml"),
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "CONFIG=nope.yaml: no such file" in missing.stderr
    dry = subprocess.run(["bash", str(SLURM / "submit_two_stage.sh")], env=dict(env, TRAIN_ITERS="10", DRY_RUN="1"),
                         capture_output=True, text=True)
    assert dry.returncode == 0 and dry.stderr.count("sbatch --parsable") == 3, dry.stderr


def test_the_30_second_note_before_torch_2_12():
    from megatron_patch.training.preemption import signal_grace_note

    under_torchrun = {"TORCHELASTIC_RUN_ID": "7"}
    assert "30 s" in signal_grace_note("2.6.0+cu126", under_torchrun)
    assert "--exit-duration-in-mins" in signal_grace_note("2.11.1", under_torchrun)
    assert signal_grace_note("2.12.0", under_torchrun) is None
    assert signal_grace_note("2.6.0", {}) is None  # not under torchrun: no grace at all


def test_the_exit_clock_starts_with_the_process():
    from megatron_patch.training.preemption import process_age

    assert 0 < process_age() < 24 * 3600  # this process has run a while: imports and setup count


# ----------------------------------------------------------------------------- on a real SLURM

from tests.slurm.scenarios import ScenarioRun, run_scenarios  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.slurm import cluster as slurm_cluster

    why = slurm_cluster.unavailable()
    if why:
        pytest.skip(why)
    return run_scenarios(tmp_path_factory.mktemp("slurm"))


def report(run: ScenarioRun) -> str:
    return run.transcript()


@pytest.mark.distributed
def test_a_straight_chain(runs):
    a = runs["straight"]
    assert a.states() == ["COMPLETED", "COMPLETED", "COMPLETED"], report(a)
    assert a.restarts() == [0, 0, 0], report(a)
    assert "--gpus-per-node=1" in a.submit_out  # the GPU headers schedule on a (fake) GPU node
    a.assert_complete()
    token_log = a.log("token")
    assert f"--init-from {a.save}/patch_weights" in token_log, report(a)
    assert "rendezvous 127.0.0.1:" in a.log("patch")  # NodeAddr, not the node's name


def _assert_resumed_like_the_straight_chain(run: ScenarioRun, straight: ScenarioRun):
    assert run.states() == ["COMPLETED", "COMPLETED", "COMPLETED"], report(run)
    assert run.restarts()[0] >= 1 and run.restarts()[1:] == [0, 0], report(run)
    run.assert_complete()
    patch_log = run.log("patch")
    assert "requeueing job" in patch_log and "restart 1" in patch_log, report(run)
    stopped = run.stopped_at()
    assert 0 < stopped < run.iters // 2, report(run)
    assert f"iter_{stopped:07d}" in patch_log
    for stage in ("patch", "token"):  # the interrupted run's losses are the straight chain's, step by step
        mine, ref = run.losses(stage), straight.losses(stage)
        assert sorted(mine) == sorted(ref) and len(mine) == run.iters // 2
        assert max(abs(mine[s] - ref[s]) for s in ref) < 1e-5, (stage, mine, ref)
    # convert and token waited for the stage to complete
    assert run.started("convert") >= run.ended("patch") and run.started("token") >= run.ended("convert")


@pytest.mark.distributed
def test_b_time_limit_signal_saves_requeues_and_resumes(runs):
    b = runs["signal"]
    _assert_resumed_like_the_straight_chain(b, runs["straight"])
    assert "got SIGUSR1" in b.log("patch") and "received SIGTERM" in b.log("patch")


@pytest.mark.distributed
def test_c_preemption_saves_requeues_and_resumes(runs):
    c = runs["preempt"]
    _assert_resumed_like_the_straight_chain(c, runs["straight"])
    log = c.log("patch")
    assert "received SIGTERM" in log and "stopped early (received SIGTERM)" in log, report(c)


@pytest.mark.distributed
def test_d_a_real_failure_stops_the_chain(runs):
    d = runs["failure"]
    assert d.states() == ["FAILED", "CANCELLED", "CANCELLED"], report(d)
    assert d.reasons()[1:] == ["DependencyNeverSatisfied", "DependencyNeverSatisfied"], report(d)
    assert d.restarts() == [0, 0, 0] and not d.log("convert") and not d.log("token"), report(d)
    log = d.log("patch")
    errors = [line for line in log.splitlines() if line.startswith("pretrain.py: error:")]
    assert len(errors) == 1 and d.bad_data in errors[0], report(d)
    assert "patch stage failed" in log and "Not requeued" in log and "submit_two_stage.sh" in log


@pytest.mark.distributed
def test_e_a_node_lost_mid_stage_resumes_from_the_last_checkpoint(runs):
    e = runs["node_lost"]
    assert e.states() == ["COMPLETED", "COMPLETED", "COMPLETED"], report(e)
    assert e.restarts()[0] == 1, report(e)
    e.assert_complete()
    log = e.log("patch")
    assert "the training step failed" in log and "requeueing job" in log, report(e)
    assert e.killed_at > 0


@pytest.mark.distributed
def test_f_the_job_stops_on_its_own_clock(runs):
    f = runs["clock"]
    assert f.states() == ["COMPLETED", "COMPLETED", "COMPLETED"], report(f)
    assert f.restarts()[0] >= 1, report(f)
    f.assert_complete()
    log = f.log("patch")
    assert "training stops and saves after" in log, report(f)
    assert "stopped early (--exit-duration-in-mins" in log, report(f)
    first_run = log.split("restart 1")[0]
    clock = re.search(r"^exit \| stage patch .*--exit-duration-in-mins [\d.]+ reached", first_run, re.M)
    assert clock, report(f)
    assert "got SIG" not in first_run[:clock.start()], report(f)  # the clock, not a signal


@pytest.mark.distributed
def test_g_a_killed_test_session_leaves_no_daemon_or_job(tmp_path):
    """A pytest killed mid-run (SIGKILL: no teardown) must not leave its cluster running: the
    cluster's watchdog stops the daemons and ends the job's processes."""
    from tests.slurm import cluster as slurm_cluster

    why = slurm_cluster.unavailable()
    if why:
        pytest.skip(why)
    session = (
        "import sys, time\n"
        "from tests.slurm.cluster import SlurmCluster\n"
        "c = SlurmCluster.start(sys.argv[1])\n"
        "c.run('sbatch', '--wrap', 'sleep 600', '-o', sys.argv[1] + '/sleep.out', check=True)\n"
        "while 'RUNNING' not in c.run('squeue', '-h', '-o', '%T').stdout:\n"
        "    time.sleep(0.2)\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", session, str(tmp_path)], cwd=ROOT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "up\n"
        cluster = slurm_cluster.SlurmCluster(tmp_path)
        cluster.adopt()
        daemons = dict(cluster.pids)
        assert set(daemons) == {"munged", "slurmctld", "slurmd-node1", "slurmd-node2"}
        end = time.time() + 60  # RUNNING comes before slurmstepd has started the job's script
        while not any(b"sleep" in _cmdline(pid) for pid in cluster.processes()) and time.time() < end:
            time.sleep(0.2)
        assert any(b"sleep" in _cmdline(pid) for pid in cluster.processes())
    finally:
        proc.kill()
        proc.wait()
    def left():
        return [n for n, pid in daemons.items() if slurm_cluster._alive(pid)] + cluster.processes()

    end = time.time() + 60
    while left() and time.time() < end:
        time.sleep(0.5)
    assert not left(), (left(), (tmp_path / "log" / "watchdog.log").read_text())


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
