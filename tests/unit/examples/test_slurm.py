"""examples/slurm against stand-in SLURM commands.

- The scripts never override the YAML config: a knob passes its flag only when it is set.
- The two-stage chain survives a stage that runs out of time: a stand-in `sbatch` queues the jobs,
  a small scheduler here runs them in `--dependency=afterok:` order (re-running a job that
  `scontrol requeue` marked), `srun` runs its command locally under the real torchrun, and the
  patch job's batch shell gets SLURM's warning signal (SIGUSR1) mid-stage, as before a time limit.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import ROOT

SLURM = ROOT / "examples" / "slurm"
VENV_BIN = Path(sys.executable).parent

# ----------------------------------------------------------------------------- stand-in commands

SBATCH = """#!{python}
# Queues a job: its options, script and environment (--export=ALL); prints the job id.
import json, os, sys
state = os.environ["FAKE_SLURM"]
with open(os.path.join(state, "next_id"), "a+") as f:
    f.seek(0)
    job_id = int(f.read() or 100) + 1
    f.seek(0); f.truncate(); f.write(str(job_id))
args = sys.argv[1:]
opts = [a for a in args if a.startswith("-")]
script = next(a for a in args if not a.startswith("-"))
deps = [d for o in opts if o.startswith("--dependency=afterok:") for d in o.split(":")[1:]]
output = next((o.split("=", 1)[1] for o in opts if o.startswith("--output=")), "slurm-%j.out")
job = dict(id=job_id, args=args, script=script, deps=[int(d) for d in deps], output=output,
           cwd=os.getcwd(), env=dict(os.environ))
with open(os.path.join(state, f"job.{{job_id}}.json"), "w") as f:
    json.dump(job, f)
print(f"{{job_id}};cluster" if "--parsable" in opts else f"Submitted batch job {{job_id}}")
"""

SRUN = """#!/bin/bash
# Runs its command here, as one task; remembers the pid for scancel; logs its arguments.
printf '%s\\0' "$@" > "$FAKE_SLURM/srun.$SLURM_JOB_ID.$(date +%s%N)"
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
echo $$ >> "$FAKE_SLURM/steps.$SLURM_JOB_ID"
exec "$@"
"""

SRUN_RECORD = """#!/bin/bash
# Logs its arguments and succeeds without running anything.
printf '%s\\0' "$@" > "$FAKE_SLURM/srun.$SLURM_JOB_ID.$(date +%s%N)"
"""

SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_SLURM/log"
case "$1 $2" in
    "show hostnames") echo localhost ;;
    requeue*) touch "$FAKE_SLURM/requeue.$2" ;;
    *) echo "scontrol stand-in: unsupported $*" >&2; exit 1 ;;
esac
"""

SCANCEL = """#!/bin/bash
# scancel --signal=SIG JOBID: the signal to every task of the job's steps (not the batch shell).
echo "scancel $*" >> "$FAKE_SLURM/log"
sig=${1#--signal=}
for pid in $(cat "$FAKE_SLURM/steps.$2" 2>/dev/null); do kill -s "$sig" "$pid" 2>/dev/null || true; done
"""


def install_fakes(tmp_path, srun=SRUN) -> dict:
    """A directory of stand-ins first on PATH; returns the environment to run the scripts in."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("sbatch", SBATCH.format(python=sys.executable)), ("srun", srun),
                       ("scontrol", SCONTROL), ("scancel", SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT), FAKE_SLURM=str(state), OMP_NUM_THREADS="1")
    return env


def srun_calls(env) -> list:
    """Arguments of every srun call, in order."""
    state = Path(env["FAKE_SLURM"])
    files = sorted(state.glob("srun.*"), key=lambda p: int(p.name.split(".")[-1]))
    return [p.read_bytes().decode().split("\0")[:-1] for p in files]


def pretrain_args(env) -> list:
    """The tools/pretrain.py arguments of the (only) training step."""
    (call,) = [c for c in srun_calls(env) if "tools/pretrain.py" in c]
    return call[call.index("tools/pretrain.py") + 1:]


def slurm_env(env, job_id: int, restarts: int = 0) -> dict:
    out = dict(env, SLURM_JOB_ID=str(job_id), SLURM_JOB_NODELIST="localhost", SLURM_JOB_NUM_NODES="1",
               SLURM_SUBMIT_DIR=str(ROOT))
    if restarts:
        out["SLURM_RESTART_COUNT"] = str(restarts)
    return out


# ----------------------------------------------------------------------------- the config is the truth

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


def run_stage(script: str, env: dict, tmp_path, **knobs) -> list:
    env = slurm_env(dict(env, SAVE=str(tmp_path / "run"), **REQUIRED, **knobs), 7)
    env.pop("TRAIN_TOKENS", None)
    if script == "token_stage.sbatch":
        env["INIT"] = ""
    for old in Path(env["FAKE_SLURM"]).glob("srun.*"):
        old.unlink()
    proc = subprocess.run(["bash", str(SLURM / script)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return pretrain_args(env)


def parsed(args):
    from megatron_patch.training.config import parse_config

    return parse_config(args)


@pytest.mark.parametrize("script", ["patch_stage.sbatch", "token_stage.sbatch"])
def test_the_scripts_do_not_override_the_config(script, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    env = install_fakes(tmp_path, srun=SRUN_RECORD)
    args = run_stage(script, dict(env, CONFIG="examples/configs/2_7b.yaml"), tmp_path)
    stage = script.split("_")[0]
    save = str(tmp_path / "run")
    assert args == ["--stage", stage, "--data-path", "0.5", "/d/a", "0.5", "/d/b", "--tokenizer-model",
                    "/t.model", "--save", save, "--load", save, "--exit-signal-handler",
                    "--config", "examples/configs/2_7b.yaml"]
    cfg = parsed(args)  # the config's values stand: TP=2, micro-batch 2, its budget and recipe
    assert cfg.parallel.tensor_model_parallel_size == 2 and cfg.train.micro_batch_size == 2
    assert cfg.train.train_tokens == 360_000_000_000 and cfg.train.patch_size == 4

    tp4 = run_stage(script, dict(env, CONFIG="examples/configs/2_7b.yaml", TP="4"), tmp_path / "tp")
    assert tp4[tp4.index("--tensor-model-parallel-size"):] == ["--tensor-model-parallel-size", "4"]
    assert [a for a in tp4 if a.startswith("--")] == [a for a in args if a.startswith("--")] + [
        "--tensor-model-parallel-size"]


def test_every_knob_passes_exactly_its_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    env = install_fakes(tmp_path, srun=SRUN_RECORD)
    knobs = {k: v[1] for k, v in KNOB_FLAGS.items()}
    per_stage = {}
    for script in ("patch_stage.sbatch", "token_stage.sbatch"):
        args = run_stage(script, dict(env, CONFIG="", EXTRA_ARGS="--model tiny --num-layers 2"),
                         tmp_path / script, **knobs)
        assert "--config" not in args and args[-4:] == ["--model", "tiny", "--num-layers", "2"]
        per_stage[script] = [a for a in args if a not in (str(tmp_path / script / "run"), "patch", "token")]
        cfg = parsed(args)
        for knob, (flag, value, section, name) in KNOB_FLAGS.items():
            assert args.count(flag) == 1 and args[args.index(flag) + 1] == value, knob
            assert float(getattr(getattr(cfg, section), name)) == float(value), knob
    assert per_stage["patch_stage.sbatch"] == per_stage["token_stage.sbatch"]  # the same recipe


def test_submit_two_stage_chains_jobs_and_checks_the_budget(tmp_path):
    env = install_fakes(tmp_path)
    env.update(REQUIRED, SAVE=str(tmp_path / "run"), NODES="4", SBATCH_EXTRA="--account=abc")
    proc = subprocess.run(["bash", str(SLURM / "submit_two_stage.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "slurm").glob("job.*.json"))]
    assert [Path(j["script"]).name for j in jobs] == ["patch_stage.sbatch", "convert.sbatch", "token_stage.sbatch"]
    assert [j["deps"] for j in jobs] == [[], [101], [102]]
    assert "--nodes=4" in jobs[0]["args"] and "--account=abc" in jobs[2]["args"]
    assert jobs[0]["env"]["CONFIG"] == "examples/configs/370m.yaml"
    assert not {"TP", "MBS", "K", "LAMBDA", "TRAIN_TOKENS"} & set(jobs[0]["env"])  # nothing invented
    assert "patch stage 101 -> convert 102 -> token stage 103" in proc.stdout
    # No budget anywhere: refused before anything is queued. A budget knob is enough.
    env["CONFIG"] = str(tmp_path / "no_budget.yaml")
    Path(env["CONFIG"]).write_text("model:\n  preset: 370m\ntrain:\n  micro_batch_size: 4\n")
    proc = subprocess.run(["bash", str(SLURM / "submit_two_stage.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "TRAIN_TOKENS" in proc.stderr and len(jobs) == 3
    missing = subprocess.run(["bash", str(SLURM / "submit_two_stage.sh")], env=dict(env, CONFIG="nope.yaml"),
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "CONFIG=nope.yaml: no such file" in missing.stderr
    dry = subprocess.run(["bash", str(SLURM / "submit_two_stage.sh")], env=dict(env, TRAIN_ITERS="10", DRY_RUN="1"),
                         capture_output=True, text=True)
    assert dry.returncode == 0 and dry.stderr.count("sbatch --parsable") == 3, dry.stderr


# ----------------------------------------------------------------------------- the chain, for real

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
  patch_fraction: 0.5
  eval_iters: 1
  seed: 7
logging:
  log_interval: 1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_steps(save: Path, stage: str) -> list:
    path = save / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line being written
        if rec.get("kind") == "train" and rec.get("stage") == stage:
            out.append(rec["step"])
    return out


def run_queue(env: dict, interrupt_at_step: int, save: Path, timeout: float = 300) -> list:
    """Run the queued jobs like a one-node cluster: a job starts once every job it depends on
    (afterok) ended with status 0; a job that `scontrol requeue` marked runs again (same id,
    SLURM_RESTART_COUNT); the first run of the patch stage's job gets SIGUSR1 once the stage
    logged `interrupt_at_step`. Returns [(job id, script, restart, exit status)] in run order."""
    state = Path(env["FAKE_SLURM"])
    jobs = {j["id"]: j for j in (json.loads(p.read_text()) for p in state.glob("job.*.json"))}
    done, restarts, history, end = {}, {}, [], time.time() + timeout
    while len(done) < len(jobs):
        ready = [i for i in sorted(jobs) if i not in done and all(done.get(d) == 0 for d in jobs[i]["deps"])]
        if not ready:
            break  # the rest can never start (a dependency failed)
        job = jobs[ready[0]]
        name = Path(job["script"]).name
        restart = restarts.get(job["id"], 0)
        out_path = job["output"].replace("%j", str(job["id"]))
        with open(out_path, "a") as out:
            proc = subprocess.Popen(["bash", job["script"]], cwd=job["cwd"], stdout=out, stderr=subprocess.STDOUT,
                                    env=slurm_env(job["env"], job["id"], restart))
            if name == "patch_stage.sbatch" and restart == 0:
                while proc.poll() is None and max(train_steps(save, "patch"), default=0) < interrupt_at_step:
                    assert time.time() < end, "the patch stage did not reach the step to interrupt"
                    time.sleep(0.1)
                proc.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit
            rc = proc.wait(timeout=max(1.0, end - time.time()))
        history.append((job["id"], name, restart, rc))
        marker = state / f"requeue.{job['id']}"
        if marker.exists():
            marker.unlink()
            restarts[job["id"]] = restart + 1
        else:
            done[job["id"]] = rc
    return history


@pytest.mark.distributed
def test_the_chain_survives_a_stage_that_runs_out_of_time(tmp_path):
    from tests.distributed.train_common import make_corpus

    prefix, tok = make_corpus(str(tmp_path / "data"))
    save = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    iters = 300
    config.write_text(TINY_CONFIG.format(iters=iters))
    env = install_fakes(tmp_path)
    env.update(CONFIG=str(config), DATA_PATH=prefix, TOKENIZER=tok, SAVE=str(save), NODES="1",
               GPUS_PER_NODE="1", MASTER_PORT=str(free_port()))
    submit = subprocess.run(["bash", str(SLURM / "submit_two_stage.sh")], env=env, cwd=tmp_path,
                            capture_output=True, text=True)
    assert submit.returncode == 0, submit.stderr

    history = run_queue(env, interrupt_at_step=10, save=save)
    logs = {p.name: p.read_text() for p in Path(f"{save}.logs").glob("slurm-*.out")}
    transcript = "\n".join(f"job {i} {name} run {r + 1}: exit {rc}" for i, name, r, rc in history)
    print(transcript)
    assert history == [(101, "patch_stage.sbatch", 0, 0), (101, "patch_stage.sbatch", 1, 0),
                       (102, "convert.sbatch", 0, 0), (103, "token_stage.sbatch", 0, 0)], \
        transcript + "\n" + "\n".join(f"--- {k}\n{v[-3000:]}" for k, v in logs.items())
    patch_log = logs["slurm-patch-101.out"]
    assert "got SIGUSR1" in patch_log and "requeueing job 101" in patch_log
    assert "stopped early" in patch_log and "received SIGTERM" in patch_log
    assert "patch stage: complete" in patch_log and "patch stage complete" in patch_log
    assert "scontrol requeue 101" in (tmp_path / "slurm" / "log").read_text()
    # The requeued run resumed the stage from the checkpoint the signal left (not from step 0).
    stopped = int(patch_log.split("patch stage: step ")[1].split(" ")[0])
    assert 10 <= stopped < iters // 2 and f"iter_{stopped:07d}" in patch_log
    # The run directory is complete: both stages, the hand-over, the compute account.
    assert (save / "compute.json").is_file()
    for d in ("patch", "patch_weights", "token"):
        assert (save / d / "latest_checkpointed_iteration.txt").is_file(), d
    assert "patch stage: complete" in logs["slurm-convert-102.out"]  # checked before converting
    assert "token stage: complete" in logs["slurm-token-103.out"]
    # One uninterrupted stage each: every step once, in order, none repeated by the relaunch.
    assert train_steps(save, "patch") == list(range(1, iters // 2 + 1))
    assert train_steps(save, "token") == list(range(1, iters // 2 + 1))
