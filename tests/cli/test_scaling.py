"""Scaling out: DDP on 2 CPU processes through the real entry point, the SLURM launcher (hydra-submitit-launcher)
composed and rendered to its sbatch script, and multiruns through submitit (its local executor, and a fake SLURM
whose srun starts one task per device as a cluster would)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tests.helpers.configs import TINY, cli_env, compose_config
from zf_lightning.cli.evaluate import evaluate
from zf_lightning.config import config_dir

TRAIN = [sys.executable, "-m", "zf_lightning.cli.train"]

# 10 classes x 20 training images, global batch 20 (TINY): 10 optimizer steps per epoch when each of the 2 ranks
# gets 10 of its 100 images per step, 5 if the global batch were (wrongly) used on each rank.
TRAIN_IMAGES, GLOBAL_BATCH, WORLD = 10 * 20, 20, 2
EPOCHS = 3
# Enough learning in 3 short epochs that the compared metrics are not the constant-prediction ones.
LEARNS = [f"trainer.max_epochs={EPOCHS}", "model.optimizer.lr=0.05"]


def run(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """zf-train in a subprocess. Its own process group: on a timeout (a hung collective) the ranks it started, which
    subprocess.run would leave behind, are killed with it."""
    process = subprocess.Popen(
        [*TRAIN, *args],
        env=env or cli_env(tmp_path),
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"zf-train {' '.join(args)} ran past {timeout} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def submitit_job(sweep: Path) -> Path:
    """The one job folder in <sweep>/.submitit/ (named by its job id, next to submitit's other bookkeeping)."""
    return only(p for p in (sweep / ".submitit").iterdir() if p.is_dir() and p.name.isdigit())


def only(paths) -> Path:
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]


# ----------------------------------------------------------------------------------------- DDP on the CPU


@pytest.mark.slow
def test_ddp_cpu_through_the_entry_point_writes_one_run_with_metrics_of_a_single_process(tmp_path):
    """trainer=ddp_cpu: Lightning re-runs the command for rank 1, which must land in rank 0's run directory (the
    timestamped default, not a hydra.run.dir we pass: that is what would split), write nothing of its own, and
    contribute its half of every batch and of the test set to the metrics."""
    done = run([*TINY, "trainer=ddp_cpu", *LEARNS], tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output

    # one run directory, one Hydra output subdir, nothing written next to it or in the working directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["train"]
    assert sorted(p.name for p in (tmp_path / "logs" / "train").iterdir()) == ["runs"]
    out = only((tmp_path / "logs" / "train" / "runs").iterdir())
    assert [p.relative_to(out) for p in out.rglob(".hydra")] == [Path(".hydra")]
    assert not list(out.glob(".pl_ddp_hydra*"))

    summary = json.loads(only(tmp_path.rglob("summary.json")).read_text())
    assert summary["status"] == "completed", summary.get("traceback")
    assert summary["output_dir"] == str(out) and summary["epochs"] == EPOCHS
    # the batch size is global: each of the 2 processes got half of it
    assert summary["config"]["data"]["batch_size"] == GLOBAL_BATCH
    assert summary["world_size"] == WORLD and summary["per_device_batch_size"] == GLOBAL_BATCH // WORLD

    # one set of checkpoints (rank 0 saves; a second writer would leave "-v1" copies)
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2 and not any("-v" in name for name in checkpoints), (
        checkpoints
    )
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == EPOCHS * TRAIN_IMAGES // GLOBAL_BATCH  # 30: per-device batch 10 on 100 images each

    # one log per rank: train.log is rank 0's alone
    shared, own = (out / "train.log").read_text(), (out / "train.rank1.log").read_text()
    assert "process rank 0" in shared and "process rank 1 logs here" not in shared and "process rank 1 logs here" in own

    # one W&B run (offline), the one whose id the run directory remembers, with the test metrics in it
    wandb_run = only(tmp_path.rglob("offline-run-*"))
    assert wandb_run.parent == out / "wandb"
    assert (out / "wandb_run_id.txt").read_text() in wandb_run.name
    written = only(wandb_run.glob("run-*.wandb")).read_bytes()
    assert b"test/top1_err" in written and b"val/top5_err" in written

    # the same checkpoint evaluated by one process on the same test images reports the same numbers. 10 classes
    # x 4 test images = 40, split 20 + 20 (per-device batch 10, so 2 full batches each): DistributedSampler pads
    # nothing (it would repeat images when the test set does not divide by the number of processes, and they would
    # be counted twice), and the loss, a mean per rank then a mean over ranks, equals the mean over all 40.
    tested = summary["best"]["checkpoint"]
    single = evaluate(
        compose_config(
            "eval",
            tmp_path / "eval",
            [
                f"ckpt_path={tested}",
                "data.test_per_class=4",
                "data.batch_size=20",
                "data.num_workers=0",
            ],
        )
    )
    assert single["status"] == "completed"
    assert (
        set(single["test"])
        == set(summary["test"])
        == {"test/loss", "test/top1_err", "test/top5_err", "test/mean_class_acc"}
    )
    for name, value in summary["test"].items():
        assert single["test"][name] == pytest.approx(value, abs=1e-4), name
    assert summary["test"]["test/top1_err"] < 90  # better than chance (10 classes): a non-trivial comparison


@pytest.mark.slow
def test_a_multirun_refuses_lightnings_script_relaunch(tmp_path):
    """The pitfall: in a multirun, Lightning's re-run of the command line would start the whole sweep again in
    every other rank. zf-train stops before any process is started, and says what to use instead."""
    done = run(["-m", *TINY, "trainer=ddp_cpu", "debug=fdr"], tmp_path)
    assert done.returncode != 0
    assert "hydra/launcher=slurm" in done.stderr and "without -m" in done.stderr, done.stderr[-3000:]
    # the default, timestamped sweep dir: a relaunched rank would have made a second one (its own timestamp)
    sweep = only((tmp_path / "logs" / "train" / "multiruns").iterdir())
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "failed" and "multirun" in summary["error"]


# --------------------------------------------------------------------------------------- SLURM (submitit)


def _fake_slurm(bin_dir: Path) -> Path:
    """sbatch, srun and sacct stand-ins, enough for submitit and for Lightning's SLURMEnvironment.

    sbatch: with FAKE_SLURM_CAPTURE set, copies the script there and fails (nothing runs); otherwise runs the
    script in the background as job FAKE_SLURM_JOB_ID with the SLURM_* variables of its #SBATCH lines.
    srun: starts SLURM_NTASKS copies of its command, SLURM_PROCID / SLURM_LOCALID 0..n-1, one node.
    sacct: the job's state, RUNNING until the script has exited.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    python = f"#!{sys.executable}\n"
    (bin_dir / "sbatch").write_text(
        python
        + """
import os, re, shutil, subprocess, sys
script = sys.argv[-1]
state_dir = os.environ["FAKE_SLURM_STATE"]
if os.environ.get("FAKE_SLURM_CAPTURE"):
    shutil.copy(script, os.environ["FAKE_SLURM_CAPTURE"])
    sys.exit("sbatch: error: this is a fake SLURM (script captured)")
flags = dict(re.findall(r"^#SBATCH --([\\w-]+)=(.*)$", open(script).read(), re.M))
job_id = os.environ["FAKE_SLURM_JOB_ID"]
tasks_per_node, nodes = int(flags.get("ntasks-per-node", 1)), int(flags.get("nodes", 1))
assert nodes == 1, "the fake SLURM has one node"
env = dict(os.environ, SLURM_JOB_ID=job_id, SLURM_JOB_NAME=flags.get("job-name", "fake"),
           SLURM_NTASKS=str(tasks_per_node), SLURM_NTASKS_PER_NODE=str(tasks_per_node), SLURM_NNODES="1",
           SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0",
           SLURM_NODELIST="127.0.0.1", SLURM_JOB_NODELIST="127.0.0.1")
state = os.path.join(state_dir, job_id)
open(state, "w").write("RUNNING")
runner = ("import subprocess, sys; rc = subprocess.call(['bash', sys.argv[1]]); "
          "open(sys.argv[2], 'w').write('COMPLETED' if rc == 0 else 'FAILED')")
# in the background, but in zf-train's process group: a test that times out kills the job with it
subprocess.Popen([sys.executable, "-c", runner, script, state], env=env, stdout=subprocess.DEVNULL,
                 stderr=open(state + ".err", "w"))
print(f"Submitted batch job {job_id}")
"""
    )
    (bin_dir / "srun").write_text(
        python
        + """
import os, subprocess, sys
args, files = sys.argv[1:], {}
while args and args[0].startswith("--"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        files[flag] = args.pop(0)
job_id, procs = os.environ["SLURM_JOB_ID"], []
for task in range(int(os.environ["SLURM_NTASKS"])):
    name = lambda flag: files[flag].replace("%j", job_id).replace("%t", str(task))
    env = dict(os.environ, SLURM_PROCID=str(task), SLURM_LOCALID=str(task), SLURM_STEP_ID="0")
    procs.append(subprocess.Popen(args, env=env, stdout=open(name("--output"), "a"), stderr=open(name("--error"), "a")))
sys.exit(max(p.wait() for p in procs))
"""
    )
    (bin_dir / "sacct").write_text(
        python
        + """
import os, sys
job_id = sys.argv[sys.argv.index("-j") + 1]
state = os.path.join(os.environ["FAKE_SLURM_STATE"], job_id)
print("JobID|State|NodeList")
print(f"{job_id}|{open(state).read().strip() if os.path.exists(state) else 'PENDING'}|localhost")
"""
    )
    for tool in ("sbatch", "srun", "sacct"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def _fake_slurm_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bin_dir = _fake_slurm(tmp_path / "fake_slurm" / "bin")
    state = tmp_path / "fake_slurm" / "state"
    state.mkdir(exist_ok=True)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_STATE": str(state), **extra}


def _never_called(cfg) -> None:  # a picklable task function for the launcher
    raise AssertionError("the fake sbatch runs nothing")


def test_the_slurm_launcher_composes_to_one_task_per_gpu_and_renders_its_sbatch_script(tmp_path, monkeypatch):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm",
                "trainer=ddp",
                "trainer.num_nodes=2",
                "trainer.devices=4",
                "hydra.launcher.partition=gpu",
                f"hydra.sweep.dir={tmp_path / 'sweep'}",
            ],
            return_hydra_config=True,
        )
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher_cfg.nodes, launcher_cfg.tasks_per_node, launcher_cfg.gpus_per_node) == (2, 4, 4)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"
    assert launcher_cfg.name not in ("bash", "interactive")  # Lightning would take the job for an interactive one
    assert launcher_cfg.timeout_min > 0 and launcher_cfg.partition == "gpu"

    # The real plugin submits to a fake sbatch that keeps the script: what a cluster would receive.
    script = tmp_path / "job.sbatch"
    for name, value in _fake_slurm_env(tmp_path, FAKE_SLURM_CAPTURE=str(script)).items():
        monkeypatch.setenv(name, value)
    launcher = instantiate(launcher_cfg)
    launcher.setup(hydra_context=None, task_function=_never_called, config=cfg)
    with pytest.raises(Exception, match="fake SLURM"):
        launcher.launch([["seed=1"]], initial_job_idx=0)
    lines = script.read_text().splitlines()
    for flag in [
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--partition=gpu",
        "--job-name=zf-train",
        "--time=1440",
        "--cpus-per-task=10",
        "--signal=USR2@120",
    ]:
        assert f"#SBATCH {flag}" in lines, (flag, lines)
    assert "export HYDRA_FULL_ERROR=1" in lines
    srun = only(line for line in lines if line.startswith("srun "))
    assert "submitit.core._submit" in srun and str(tmp_path / "sweep" / ".submitit") in srun


@pytest.mark.slow
def test_a_smoke_job_runs_through_submitits_local_executor(tmp_path):
    sweep = tmp_path / "sweep"
    done = run(["-m", "hydra/launcher=local", *TINY, "debug=fdr", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "completed" and set(summary["test"]) >= {"test/top1_err", "test/top5_err"}
    assert summary["output_dir"] == str(sweep / "0") and "debug=fdr" in summary["overrides"]
    assert (sweep / "multirun.yaml").is_file() and (sweep / "0" / ".hydra" / "config.yaml").is_file()
    # submitit's own files: the pickled job, its result, and the job's stdout / stderr
    job = submitit_job(sweep)
    names = {p.name for p in job.iterdir()}
    assert {
        f"{job.name}_submitted.pkl",
        f"{job.name}_0_result.pkl",
        f"{job.name}_0_log.out",
        f"{job.name}_0_log.err",
    } <= names, names
    assert "Seed set to" in (job / f"{job.name}_0_log.err").read_text() + (job / f"{job.name}_0_log.out").read_text()


@pytest.mark.slow
def test_ddp_on_a_fake_slurm_node_one_task_per_device_and_no_relaunch(tmp_path):
    """hydra/launcher=slurm as on a cluster: sbatch, then srun starts one task per device; Lightning's
    SLURMEnvironment joins them without re-running anything. Every task runs the Hydra job, in one directory."""
    sweep = tmp_path / "sweep"
    env = {**cli_env(tmp_path), **_fake_slurm_env(tmp_path, FAKE_SLURM_JOB_ID=str(random.randint(10000, 99999)))}
    done = run(
        [
            "-m",
            "hydra/launcher=slurm",
            "trainer=ddp_cpu",
            "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.cpus_per_task=1",
            *TINY,
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        env=env,
        timeout=180,
    )  # ~30 s; a rank that dies leaves the other waiting in a collective
    job = submitit_job(sweep)
    logs = {p.name: p.read_text() for p in job.glob("*_log.*")}
    assert done.returncode == 0, (done.stderr[-3000:], {name: text[-2000:] for name, text in logs.items()})
    assert sorted(logs) == [f"{job.name}_{task}_log.{kind}" for task in (0, 1) for kind in ("err", "out")]
    # each SLURM task is one rank of 2: a process started by Lightning would be a third "member"
    for task in (0, 1):
        assert f"GLOBAL_RANK: {task}, MEMBER: {task + 1}/2" in logs[f"{job.name}_{task}_log.err"]
    assert "Starting with 2 processes" in logs[f"{job.name}_0_log.err"]
    assert "SLURM auto-requeueing enabled" in logs[f"{job.name}_0_log.err"]  # Lightning chose its SLURMEnvironment
    assert "srun` command is available on your system but is not used" not in "".join(logs.values())

    out = sweep / "0"
    assert sorted(p.name for p in sweep.iterdir()) == [".submitit", "0", "multirun.yaml"]
    summary = json.loads(only(tmp_path.rglob("summary.json")).read_text())
    assert summary["status"] == "completed" and summary["output_dir"] == str(out)
    assert summary["world_size"] == 2 and summary["per_device_batch_size"] == GLOBAL_BATCH // 2
    assert (
        torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == TRAIN_IMAGES // GLOBAL_BATCH
    )
    wandb_run = only(tmp_path.rglob("offline-run-*"))
    assert (out / "wandb_run_id.txt").read_text() in wandb_run.name
