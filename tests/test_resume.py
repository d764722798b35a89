"""Checkpoints, resume after a signal or a crash, and DDP workers (gloo on the CPU).

The claim under test: the trained model does not depend on how often training
was interrupted, nor on how many workers trained it, beyond floating-point
noise. Interruptions are real signals delivered to this process (through
``on_step``, at a chosen step) and real exceptions; DDP runs real torchrun
workers.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import synthetic_volumes as _volumes
from conftest import REPO, TINY_CONFIG, assert_same_model, assert_same_training
from mrisr.data.degrade import downsample
from mrisr.data.splits import write_splits
from mrisr.diffusion.cascade import stage_pair
from mrisr.distributed import World, requested_gpus
from mrisr.resume import RESUME_NAME, StopSignals, TrainingInterrupted
from mrisr.training import StageRun, TrainJob, train_stage

STEPS = 12


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine more threads spin and wait far longer."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def config():
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["train"].pop("checkpoint_every")  # not part of the model's config (see common.smk)
    cfg["train"].update(steps=STEPS, val_every=4, warmup_steps=3)
    cfg["diffusion"]["target"] = "residual"  # the loop's state and resume are the same whatever the residual's base
    return cfg




@pytest.fixture(scope="module")
def pairs():
    out = []
    for seed in range(3):
        hr, mask = _volumes(seed)
        out.append(stage_pair(hr, downsample(hr, 4), mask, [2, 2], 0))
    return out


def _train(folder: Path, pairs, config, checkpoint_every: int = 0, **kwargs) -> list[str]:
    """train_stage on the CPU into ``folder``; returns the logged messages."""
    messages: list[str] = []
    run = StageRun({**config, "device": "cpu"}, 0, str(folder / "checkpoint.pt"), str(folder / "log.tsv"),
                   checkpoint_every=checkpoint_every)
    train_stage(pairs[:2], pairs[2:], run, log=messages.append, **kwargs)
    return messages


def _signal_at(stops: dict[int, int]):
    """on_step callback: send ``stops[n]`` to this process after step n."""
    def on_step(n: int) -> None:
        if n in stops:
            os.kill(os.getpid(), stops[n])
    return on_step


def _log_without_seconds(path: Path) -> list[list[str]]:
    return [line.split("\t")[:4] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, pairs, config):
    """The uninterrupted run every resumed run is compared with."""
    folder = tmp_path_factory.mktemp("straight")
    _train(folder, pairs, config, checkpoint_every=4)
    assert not (folder / RESUME_NAME).exists(), "the resume checkpoint is deleted once training finished"
    return folder


@pytest.mark.parametrize(
    "stops",
    [
        {5: signal.SIGTERM},  # Slurm's time limit, --signal=TERM@..., pre-emption, scancel
        {3: signal.SIGUSR1, 9: signal.SIGTERM},  # interrupted twice
        {1: signal.SIGINT},  # Ctrl-C
    ],
    ids=["SIGTERM", "SIGUSR1+SIGTERM", "SIGINT"],
)
def test_training_stopped_by_signals_resumes_to_the_same_model(tmp_path, pairs, config, straight, stops):
    for step, sig in sorted(stops.items()):
        with pytest.raises(TrainingInterrupted, match=f"stopped by {signal.Signals(sig).name} after step {step}"):
            _train(tmp_path, pairs, config, checkpoint_every=0, on_step=_signal_at({step: sig}))
        resume = torch.load(tmp_path / RESUME_NAME, weights_only=True)
        assert resume["step"] == step, "no step is lost: the checkpoint is written after the step that saw the signal"
        assert {"model", "ema", "optimizer", "rng", "config", "progress", "mrisr_version"} <= set(resume)
        assert {"numpy", "noise", "torch"} <= set(resume["rng"])
        assert not (tmp_path / "checkpoint.pt").exists()
    messages = _train(tmp_path, pairs, config, checkpoint_every=0)
    assert f"resumed from step {max(stops)} of {STEPS} ({tmp_path / RESUME_NAME})" in messages
    assert not (tmp_path / RESUME_NAME).exists()
    ours = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    theirs = torch.load(straight / "checkpoint.pt", weights_only=True)
    assert_same_training(ours, theirs)
    assert _log_without_seconds(tmp_path / "log.tsv") == _log_without_seconds(straight / "log.tsv")


def test_a_crash_loses_at_most_checkpoint_every_steps(tmp_path, pairs, config, straight):
    class Crash(Exception):
        pass

    def crash_at_7(n: int) -> None:
        if n == 7:
            raise Crash

    with pytest.raises(Crash):
        _train(tmp_path, pairs, config, checkpoint_every=3, on_step=crash_at_7)
    assert torch.load(tmp_path / RESUME_NAME, weights_only=True)["step"] == 6
    messages = _train(tmp_path, pairs, config, checkpoint_every=3)
    assert any(m.startswith("resumed from step 6 of 12") for m in messages)
    assert_same_training(torch.load(tmp_path / "checkpoint.pt", weights_only=True),
                         torch.load(straight / "checkpoint.pt", weights_only=True))


def test_without_resume_state_the_rng_streams_would_differ(tmp_path, pairs, config, straight):
    """The comparison above can fail: restarting from the saved weights alone gives another model."""
    with pytest.raises(TrainingInterrupted):
        _train(tmp_path, pairs, config, on_step=_signal_at({5: signal.SIGTERM}))
    resume = torch.load(tmp_path / RESUME_NAME, weights_only=True)
    del resume["rng"]["noise"]
    fresh = torch.Generator().manual_seed(int(config["train"]["seed"]) + 2)
    resume["rng"]["noise"] = fresh.get_state()  # the noise stream restarted instead of resumed
    torch.save(resume, tmp_path / RESUME_NAME)
    _train(tmp_path, pairs, config)
    with pytest.raises(AssertionError):
        assert_same_training(torch.load(tmp_path / "checkpoint.pt", weights_only=True),
                             torch.load(straight / "checkpoint.pt", weights_only=True))


@pytest.mark.parametrize("change", ["config", "data", "damaged"])
def test_a_resume_checkpoint_of_another_run_is_ignored(tmp_path, pairs, config, change):
    with pytest.raises(TrainingInterrupted):
        _train(tmp_path, pairs, config, on_step=_signal_at({5: signal.SIGTERM}))
    other_config, other_pairs = config, pairs
    if change == "config":
        other_config = copy.deepcopy(config)
        other_config["train"]["lr"] = 0.002
    elif change == "data":
        other_pairs = [pairs[1], pairs[0], pairs[2]]
    else:
        path = tmp_path / RESUME_NAME
        path.write_bytes(path.read_bytes()[:2000])
    messages = _train(tmp_path, other_pairs, other_config)
    expected = "unreadable resume checkpoint" if change == "damaged" else f"resume checkpoint is for another {change}"
    assert any(expected in m and "starting from step 0" in m for m in messages), messages
    assert not any(m.startswith("resumed") for m in messages)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == STEPS


def test_a_signal_before_training_starts_stops_it_after_the_first_step(tmp_path, pairs, config):
    """pipeline.train holds the signals from the start (while volumes load) and passes them in."""
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM after step 1"):
            run = StageRun({**config, "device": "cpu"}, 0, str(tmp_path / "checkpoint.pt"), str(tmp_path / "log.tsv"))
            train_stage(pairs[:2], pairs[2:], run, log=lambda m: None, stop=stop)
    assert torch.load(tmp_path / RESUME_NAME, weights_only=True)["step"] == 1


def test_stop_signals_restore_the_previous_handlers():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == "SIGUSR1", "the first signal is the one reported"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C does not wait for the step
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_requested_gpus_reads_the_resources_the_plugin_reads():
    assert requested_gpus({}) == 0
    assert requested_gpus({"gpu": 2}) == 2
    assert requested_gpus({"gpus": "4"}) == 4
    assert requested_gpus({"gres": "gpu:a100:3"}) == 3
    assert requested_gpus({"gres": "gpu"}) == 1
    assert requested_gpus({"gres": "tmp:10G"}) == 0
    assert [World(rank=r, size=3).rows(8) for r in range(3)] == [slice(0, 2), slice(2, 5), slice(5, 8)]


# --- DDP: two torchrun workers with the gloo backend ------------------------------------


@pytest.fixture(scope="module")
def stage_files(tmp_path_factory):
    """Stage caches and a split on disk, as the workflow hands them to pipeline.train."""
    from mrisr.training import write_stage_cache

    folder = tmp_path_factory.mktemp("ddp_inputs")
    caches: dict[str, str] = {}
    for k, subject in enumerate(("s1", "s2", "s3")):
        hr, mask = _volumes(k)
        caches[subject] = str(folder / subject)
        write_stage_cache(stage_pair(hr, downsample(hr, 4), mask, [2, 2], 0), caches[subject], [8.0, 8.0, 8.0])
    write_splits(folder / "splits.tsv", {"s1": "train", "s2": "train", "s3": "val"})
    return caches, str(folder / "splits.tsv")


def _train_kwargs(stage_files, config, out: Path, steps: int, checkpoint_every: int = 0, loader_workers=None,
                  **extra) -> dict:
    """pipeline.train's arguments: the job (as JSON) and how to run it."""
    caches, splits = stage_files
    cfg = copy.deepcopy(config)
    cfg["device"] = "cpu"
    cfg["train"].update(batch_size=4, steps=steps)
    run = StageRun(cfg, 0, str(out / "checkpoint.pt"), str(out / "log.tsv"), checkpoint_every=checkpoint_every,
                   loader_workers=loader_workers)
    job = TrainJob(run, splits, caches=caches)
    return dict(job=job.to_json(), out_plot=str(out / "loss.png"), **extra)


def _pipeline_train(kwargs: dict) -> None:
    from mrisr.pipeline import train

    train(**{**kwargs, "job": TrainJob.from_json(kwargs["job"])})


def _run_pipeline_train(kwargs: dict, **popen) -> subprocess.Popen:
    """pipeline.train in a child process, as the workflow's script runs it."""
    code = ("import json, sys; from mrisr.pipeline import train; from mrisr.training import TrainJob; "
            "a = json.loads(sys.argv[1]); train(**{**a, 'job': TrainJob.from_json(a['job'])})")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(kwargs)], env=env, **popen)


@pytest.mark.slow
def test_loader_workers_give_the_same_model_and_stop_cleanly_when_the_whole_job_gets_sigterm(
        tmp_path, stage_files, config):
    """As Slurm stops a job: SIGTERM to every process, loader workers included. The training process
    saves and exits; resumed, again with two loader workers, it ends with the model of a run whose
    patches came from no worker at all."""
    steps = 30
    inline = tmp_path / "inline"
    _pipeline_train(_train_kwargs(stage_files, config, inline, steps, loader_workers=0))
    out = tmp_path / "workers"
    kwargs = _train_kwargs(stage_files, config, out, steps, checkpoint_every=2, loader_workers=2)
    proc = _run_pipeline_train(kwargs, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out / RESUME_NAME).exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no resume checkpoint within 240 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)  # no worker keeps the job alive
    assert "TrainingInterrupted: training stopped by SIGTERM" in stderr, stderr[-3000:]
    assert 0 < torch.load(out / RESUME_NAME, weights_only=True)["step"] < steps
    _pipeline_train(_train_kwargs(stage_files, config, out, steps, loader_workers=2))
    assert_same_model(torch.load(out / "checkpoint.pt", weights_only=True),
                      torch.load(inline / "checkpoint.pt", weights_only=True))


@pytest.mark.slow
def test_ddp_workers_train_the_single_process_model_and_resume_after_sigterm(tmp_path, stage_files, config):
    steps = 40
    single = tmp_path / "single"
    _pipeline_train(_train_kwargs(stage_files, config, single, steps))

    # Two workers, stopped by SIGTERM to the launching process once a periodic checkpoint exists.
    ddp = tmp_path / "ddp"
    ddp_log = tmp_path / "ddp.log"
    kwargs = _train_kwargs(stage_files, config, ddp, steps, checkpoint_every=2, nproc=2, threads=2,
                           log_file=str(ddp_log))
    proc = _run_pipeline_train(kwargs, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (ddp / RESUME_NAME).exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no resume checkpoint within 240 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "TrainingInterrupted: training stopped by SIGTERM" in stderr, stderr[-3000:]
    log_text = ddp_log.read_text()
    assert "x 2 workers" in log_text and "stopped by SIGTERM after step" in log_text, log_text
    stopped = torch.load(ddp / RESUME_NAME, weights_only=True)
    assert 0 < stopped["step"] < steps and not (ddp / "checkpoint.pt").exists()

    # Resumed by two workers again, it ends where the single process ended.
    kwargs = _train_kwargs(stage_files, config, ddp, steps, nproc=2, threads=2, log_file=str(ddp_log))
    proc = _run_pipeline_train(kwargs, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"resumed from step {stopped['step']} of {steps}" in ddp_log.read_text()
    assert not (ddp / RESUME_NAME).exists() and (ddp / "loss.png").stat().st_size > 0
    assert_same_model(torch.load(ddp / "checkpoint.pt", weights_only=True),
                      torch.load(single / "checkpoint.pt", weights_only=True))
    ours, theirs = (np.loadtxt(folder / "log.tsv", skiprows=1)[:, 1:3] for folder in (ddp, single))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)  # train and val loss at every log row
