"""Run one experiment's tiny variant under several --parallel modes in this process and print
each mode's final metrics as one JSON line ('FINALS {...}'). The caller sets the fake CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=8) and compares the modes.

Usage: python tests/parallel_lessons_check.py MODULE WORKROOT MODES [experiment args...]
(MODES: comma-separated, e.g. single,mesh,pmap)
"""

import importlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxfast import experiment  # noqa: E402

name, root, modes, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(","), sys.argv[4:]
lesson = importlib.import_module(f"experiments.{name}")
finals = {}
for mode in modes:
    finals[mode] = experiment.run(lesson.main, lesson.Config(), lesson.TINY,
                                  args=["--tiny", "--workdir", str(root / mode), "--parallel", mode, *args])
print("FINALS " + json.dumps(finals), flush=True)
