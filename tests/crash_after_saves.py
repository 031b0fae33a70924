"""Run an experiment module and SIGKILL this process right after its Nth checkpoint save.

Usage: python tests/crash_after_saves.py N MODULE [experiment args...]
A real kill -9 at a deterministic point: the test then reruns the same command.
"""

import os
import runpy
import signal
import sys

from jaxfast.checkpoint import Checkpointer

n_saves, module, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
original_save = Checkpointer.save
saves = 0


def save_then_maybe_die(self, *a, **kw):
    global saves
    step = original_save(self, *a, **kw)
    saves += 1
    if saves == n_saves:
        print(f"killing myself after save {saves} (step {step})", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return step


Checkpointer.save = save_then_maybe_die
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)  # sys.modules["__main__"] is the experiment (tyro reads its annotations there)
