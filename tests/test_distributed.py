"""Several processes on one run (jax.distributed on 127.0.0.1, CPU collectives over gloo): two
processes train a tiny lesson to the parameters of one process with the same global batch, and a
checkpoint written by two processes resumes on one, and the reverse. Plus the settings' checks.

Every subprocess has a timeout, so a hang (a collective some process never reaches) fails the
test instead of hanging the suite.

Tolerance: two processes with one CPU device each run the same global computation as one
device (the mesh splits each batch of 8 rows 4 + 4 and XLA all-reduces the gradient sums), so
only the order of float additions differs: parameters agree to 1e-5 (seen: 1.2e-7 after 6 steps).
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxfast import distributed
from jaxfast.errors import InputError
from jaxfast.experiment import check_workdir, ConfigMismatch

TESTS = Path(__file__).resolve().parent
LESSON = TESTS / "distributed_lesson.py"
SIGTERM_AT_STEP = TESTS / "sigterm_at_step.py"
TIMEOUT = 300
ADULT_DUMMY = TESTS.parent / "jaxfast" / "datasets" / "dummy_data" / "adult"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(workdir: Path, n: int, stop_at_step: int | None = None, command: list[str] | None = None) -> list[str]:
    """Run the tiny lesson (or `command`) in `n` processes (each with one CPU device); their stdout.
    With `stop_at_step` every process sends itself SIGTERM during that train step (a preemption)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAXFAST_ALL_PROCESSES_PRINT"] = "0"
    prefix = [sys.executable] + ([str(SIGTERM_AT_STEP), str(stop_at_step), "distributed_lesson"] if stop_at_step
                                 else [str(LESSON)])
    prefix = command or prefix
    common = ["--workdir", str(workdir)]
    if n > 1:
        common += ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", str(n)]
    procs = [subprocess.Popen(prefix + common + (["--process-id", str(i)] if n > 1 else []), cwd=TESTS.parent, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
             for i in range(n)]
    outputs = []
    try:
        for i, proc in enumerate(procs):
            out, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, f"process {i} of {n} exited {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return outputs


def params(workdir: Path) -> dict:
    with np.load(workdir / "params.npz") as saved:
        return {k: saved[k] for k in saved.files}


def assert_same_params(a: dict, b: dict, exact: bool = False) -> None:
    assert a.keys() == b.keys() and int(a["step"]) == int(b["step"]) > 0
    for key in a:
        if exact:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("one") / "run"
    run_processes(workdir, 1)
    return workdir


def test_two_processes_train_to_the_parameters_of_one(one_process, tmp_path):
    outs = run_processes(tmp_path / "two", 2)
    assert "2 device(s), mode mesh" in outs[0] and outs[0].strip().splitlines()[-1].startswith("final: ")
    # Only process 0 prints (gloo's own C++ lines reach every process's stdout).
    assert not [line for line in outs[1].splitlines() if not line.startswith("[Gloo]")], outs[1]
    assert_same_params(params(one_process), params(tmp_path / "two"))
    for name in ("history.csv", "metrics.json", "losses.png", "config.json"):
        assert (tmp_path / "two" / name).is_file(), name


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_on_another_process_count(one_process, tmp_path, first, then):
    """Preempted (SIGTERM) at step 4 of 6 under `first` processes, resumed under `then`."""
    workdir = tmp_path / "run"
    outs = run_processes(workdir, first, stop_at_step=4)
    assert "preempted" in outs[0] and not (workdir / "params.npz").exists()
    outs = run_processes(workdir, then)
    assert "resuming from checkpoint at step 4" in outs[0]
    assert_same_params(params(one_process), params(workdir))


def test_two_processes_each_decoding_their_own_image_rows_train_to_the_parameters_of_one(tmp_path):
    """Augmented tf.data image batches: each process decodes only the rows of every global batch
    that its device holds (ImageLoader.local_batches); the parameters are those of one process."""
    command = [sys.executable, str(LESSON), "--kind", "images"]
    run_processes(tmp_path / "one", 1, command=command)
    outs = run_processes(tmp_path / "two", 2, command=command)
    assert "2 device(s), mode mesh" in outs[0]
    assert_same_params(params(tmp_path / "one"), params(tmp_path / "two"))


@pytest.mark.slow
def test_a_lesson_exports_from_two_processes(tmp_path):
    module = [sys.executable, "-m", "experiments.lesson4_tabular", "--tiny", "--data-dir", str(ADULT_DUMMY)]
    outs = run_processes(tmp_path / "run", 2, command=module)
    assert "export:" in outs[0] and (tmp_path / "run" / "export" / "export.json").is_file()


# ------------------------------------------------------------------ settings


def test_every_experiment_takes_the_device_and_process_settings():
    proc = subprocess.run([sys.executable, "-m", "experiments.lesson4_collab", "--help"], cwd=TESTS.parent,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in ("--parallel {auto,single,mesh,pmap}", "--mesh-data", "--coordinator", "--num-processes",
                   "--process-id"):
        assert option in proc.stdout, option


def test_settings_from_flags_and_environment():
    assert distributed.settings_from() == distributed.ProcessSettings()
    env = {"JAXFAST_COORDINATOR": "10.0.0.1:1234", "JAXFAST_NUM_PROCESSES": "4", "JAXFAST_PROCESS_ID": "3"}
    assert distributed.settings_from(environ=env) == distributed.ProcessSettings("10.0.0.1:1234", 4, 3)
    assert distributed.settings_from(process_id=1, environ=env).process_id == 1  # a flag beats the variable
    with pytest.raises(InputError, match="needs --coordinator"):
        distributed.settings_from(num_processes=2, process_id=0, environ={})
    with pytest.raises(InputError, match="out of range"):
        distributed.settings_from("h:1", 2, 2, environ={})
    with pytest.raises(InputError, match="needs --num-processes"):
        distributed.settings_from("h:1", environ={})
    with pytest.raises(InputError, match="JAXFAST_NUM_PROCESSES='two'"):
        distributed.settings_from(environ={"JAXFAST_NUM_PROCESSES": "two"})


def test_clusters_jax_detects():
    assert distributed.detected_cluster({}) is None
    assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"
    assert distributed.detected_cluster({"TPU_WORKER_HOSTNAMES": "t1"}) is None
    assert distributed.detected_cluster({"TPU_WORKER_HOSTNAMES": "t1,t2"}) == "tpu"


def test_one_process_needs_no_setup():
    assert distributed.initialize(distributed.ProcessSettings(), environ={}) is False
    assert distributed.is_primary() and distributed.process_index() == 0
    distributed.barrier("nothing to wait for")


def test_devices_and_processes_may_change_on_resume_but_nothing_else(tmp_path):
    config = {"run": {"workdir": "a", "num_processes": 2, "process_id": 1, "coordinator": "h:1"},
              "train": {"parallel": {"parallel": "mesh", "mesh_data": 2}, "wd": 0.1}}
    check_workdir(tmp_path, config)
    (tmp_path / "history.csv").write_text("epoch\n0\n")  # the workdir holds work now
    resumed = {"run": {"workdir": "b", "num_processes": None, "process_id": None, "coordinator": None},
               "train": {"parallel": {"parallel": "single", "mesh_data": None}, "wd": 0.1}}
    check_workdir(tmp_path, resumed)
    with pytest.raises(ConfigMismatch, match="train.wd"):
        check_workdir(tmp_path, {**resumed, "train": {**resumed["train"], "wd": 0.2}})
