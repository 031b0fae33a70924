"""Run an experiment module and send this process SIGTERM during its Nth train step (counted
over the whole run), as a TPU VM or SLURM does before preempting a job.

Usage: python tests/sigterm_at_step.py N MODULE [experiment args...]
"""

import dataclasses
import os
import runpy
import signal
import sys

from jaxfast import parallel

n_step, module, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
original_make_runner = parallel.make_runner
steps = 0


def make_runner(*a, **kw):
    runner = original_make_runner(*a, **kw)

    def train_step(state, batch):
        global steps
        steps += 1
        if steps == n_step:
            print(f"sending SIGTERM to myself during step {steps}", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
        return runner.train_step(state, batch)

    return dataclasses.replace(runner, train_step=train_step)


parallel.make_runner = make_runner  # before jaxfast.learner is imported, so the experiment's learners use it
assert "jaxfast.learner" not in sys.modules
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
