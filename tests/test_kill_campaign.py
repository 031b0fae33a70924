"""A small kill -9 campaign (tests/kill_campaign.py) in the normal suite: each of the tabular,
collab and vision lessons is SIGKILLed twice in a row at seeded random moments (after its
first checkpoint, then after its module started), rerun to the end, and must end bitwise where an uninterrupted run ends
(export weights, latest checkpoint arrays, final metrics). Targeted kills from inside the run:
in the middle of a checkpoint save and of the export. The long campaign is
`python -m tests.kill_campaign --kills N`."""

import numpy as np
import pytest

import kill_campaign as kc


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("kills")


@pytest.fixture(scope="module")
def references(root):
    """One uninterrupted reference run per lesson (fast variants), made on first use."""
    table, made = kc.lessons(root, fast=True), {}

    def reference(name: str):
        if name not in made:
            made[name] = (table[name], kc.reference_run(table[name], root, root / "jax_cache", warm=False))
        return made[name]

    return reference


def assert_same_end(trial: kc.Trial) -> None:
    assert not trial.mismatches, trial
    assert trial.attempts[-1].returncode == 0 and not trial.output_mismatches, trial


@pytest.mark.parametrize("name,seed", [("tabular", 1), ("collab", 2), ("vision", 3)])
def test_two_random_kills_in_a_row_then_the_rerun_ends_bitwise_identical(root, references, name, seed):
    lesson, ref = references(name)
    # Within the first ~third of what follows the first checkpoint: the run is still going.
    window = ref.seconds - ref.main_at - ref.first_saved_at
    rng = np.random.default_rng(seed)
    delays = [(float(rng.uniform(0.0, 0.3)) * window, "saved"), (float(rng.uniform(0.0, 0.5)) * window, "main")]
    trial = kc.run_trial(lesson, ref, root, root / "jax_cache", seed, delays)
    assert trial.attempts[0].killed, trial  # the first kill lands after a checkpoint, before the end
    assert any(a.resumed for a in trial.attempts[1:]), trial  # (a rerun killed during its startup says nothing yet)
    assert_same_end(trial)
    assert not any(a.fell_back for a in trial.attempts), "a kill left an unreadable checkpoint"


@pytest.mark.parametrize("target", ["mid-save", "mid-export"])
def test_a_kill_inside_a_save_or_the_export_resumes_identically(root, references, target):
    lesson, ref = references("tabular")
    finalizes = ref.counts["finalize"]  # Orbax commits: 3-4 per checkpoint, the export's last
    kill_at = "finalize:5" if target == "mid-save" else f"finalize:{finalizes}"
    trial = kc.run_trial(lesson, ref, root, root / "jax_cache", 10 + len(target), [], kill_at)
    assert trial.attempts[0].killed and trial.attempts[0].phase == ("mid-save" if target == "mid-save" else "export"), trial
    assert_same_end(trial)


def test_a_kill_just_after_the_last_checkpoint_keeps_every_output(root, references):
    lesson, ref = references("tabular")
    # its own seed: the trial's workdir is named by it (20 is the mid-export trial's, 10 + len("mid-export"))
    trial = kc.run_trial(lesson, ref, root, root / "jax_cache", 31, [], f"saved:{ref.counts['saved']}")
    assert trial.attempts[0].killed and not trial.mismatches, trial
    assert not trial.output_mismatches, trial.output_mismatches
