"""Run an experiment module as `python -m MODULE ARGS` would, appending one line per event to
the file named by $KILL_TRACE, so that a kill -9 sent from outside at a random moment can be
placed: the last line written says what the run was doing (training step, mid-save, eval,
export...). With $KILL_AT=EVENT:N the run SIGKILLs itself at the Nth EVENT (targeted kills).

Usage: KILL_TRACE=trace.txt [KILL_AT=finalize:2] python tests/traced_run.py MODULE [args...]

Events: main (module starts), step (a train step is dispatched), save / finalize (Orbax is
about to commit a written checkpoint or export by renaming its temporary folder) / saved,
restore (a checkpoint is being read back to resume), eval / evaluated, export / exported,
end. Each line is `EVENT COUNT SECONDS` written with one os.write, so a kill never loses it.
"""

import dataclasses
import functools
import os
import runpy
import signal
import sys
import time

TRACE = os.open(os.environ["KILL_TRACE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
KILL_EVENT, _, KILL_COUNT = os.environ.get("KILL_AT", "").partition(":")
counts: dict[str, int] = {}


def event(name: str) -> None:
    """Record `name`; die here when it is the targeted occurrence."""
    counts[name] = counts.get(name, 0) + 1
    os.write(TRACE, f"{name} {counts[name]} {time.time():.4f}\n".encode())
    if name == KILL_EVENT and counts[name] == int(KILL_COUNT):
        os.kill(os.getpid(), signal.SIGKILL)


def around(owner, attribute: str, before: str, after: str | None = None) -> None:
    """Wrap owner.attribute to record `before` on entry and `after` on return."""
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        event(before)
        result = original(*args, **kwargs)
        if after:
            event(after)
        return result

    setattr(owner, attribute, wrapper)


def patch() -> None:
    from orbax.checkpoint._src.path import atomicity

    from jaxfast import export, parallel
    from jaxfast.checkpoint import Checkpointer

    original_make_runner = parallel.make_runner

    def make_runner(*args, **kwargs):
        runner = original_make_runner(*args, **kwargs)

        def train_step(state, batch):
            event("step")
            return runner.train_step(state, batch)

        return dataclasses.replace(runner, train_step=train_step)

    parallel.make_runner = make_runner  # before jaxfast.learner imports it
    assert "jaxfast.learner" not in sys.modules
    from jaxfast.learner import Learner

    original_finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
        event("finalize")
        return await original_finalize(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    around(Checkpointer, "save", "save", "saved")
    around(Checkpointer, "restore", "restore")
    around(Learner, "_evaluate", "eval", "evaluated")
    around(export, "export_model", "export", "exported")


if __name__ == "__main__":
    patch()
    module, args = sys.argv[1], sys.argv[2:]
    sys.argv = [module, *args]
    event("main")
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)  # tyro reads the experiment's annotations there
    finally:
        event("end")
