"""Lesson 7's GAN experiments end to end on tiny variants: the WGAN (losses, sample grids, no
NaN, the critic's Wasserstein estimate falling), WGAN-GP, the superres GAN's three stages, and
kill -9 during GAN training then a rerun that ends with the parameters of an uninterrupted run."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
import pytest

from conftest import shared_dataset
from jaxfast import experiment
from jaxfast.gan.data import image_grid, image_files

REPO = Path(__file__).resolve().parents[1]
CRASH = Path(__file__).with_name("crash_after_saves.py")


def _run(module, workdir: Path, data_dir: Path, *extra) -> dict:
    args = ["--tiny", "--workdir", str(workdir), "--data-dir", str(data_dir), *extra]
    return experiment.run(module.main, module.Config(), module.TINY, args=args)


def _latest_arrays(checkpoints: Path) -> tuple[int, list[np.ndarray]]:
    """(step, leaves) of the latest checkpoint in `checkpoints`, read without a target."""
    with ocp.CheckpointManager(checkpoints, item_names=("state", "meta")) as manager:
        step = manager.latest_step()
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return step, [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.fixture(scope="module")
def mnist_tiny():
    return shared_dataset("mnist_tiny")


@pytest.fixture(scope="module")
def wgan_run(tmp_path_factory, mnist_tiny):
    from experiments import lesson7_wgan

    workdir = tmp_path_factory.mktemp("wgan") / "run"
    return workdir, _run(lesson7_wgan, workdir, mnist_tiny, "--epochs", "8", "--max-images", "480")


def test_image_files_skip_label_folders_and_grid_layout(tmp_path):
    for name in ("a/x.png", "a/y.JPG", "trainannot/m.png", "labels/l.png", "b/notes.txt", "b/.hidden.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == ["a/x.png", "a/y.JPG"]
    grid = image_grid(np.stack([np.full((4, 4, 1), -1.0), np.full((4, 4, 1), 1.0), np.zeros((4, 4, 1))]), pad=1)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3) and grid.dtype == np.uint8
    assert (grid[1:5, 1:5] == 0).all() and (grid[1:5, 6:10] == 255).all() and (grid[6:10, 1:5] == 128).all()
    assert (grid[6:10, 6:10] == 255).all()  # the empty cell stays background


# The tiny WGAN (16 px, mnist_tiny's first 480 images, bs 16, RMSprop 5e-4, n_crit 5): 240 steps,
# 200 critic + 40 generator. Measured per-epoch critic estimates E[D(real)] - E[D(fake)]:
# 0.044 0.064 0.066 0.065 0.062 0.060 0.056 0.053 -- the critic first learns to separate (up to
# 0.066 at epoch 2), then the generator closes the gap (0.053 at the end, 0.81 of the peak).
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wgan_tiny_writes_losses_and_grids_and_the_estimate_falls(wgan_run):
    workdir, final = wgan_run
    history = pd.read_csv(workdir / "history.csv")
    assert len(history) == 8 and (history.n_critic_steps == 25).all() and (history.n_generator_steps == 5).all()
    assert np.isfinite(history[["critic_loss", "generator_loss", "critic_wasserstein"]].values).all()
    for epoch in range(8):
        assert (workdir / "samples" / f"epoch_{epoch:03d}.png").stat().st_size > 0
    assert (workdir / "gan_losses.png").is_file() and list((workdir / "tensorboard").glob("events.*"))
    assert json.loads((workdir / "metrics.json").read_text())["final"] == final
    estimates = history.critic_wasserstein.values
    peak = int(np.argmax(estimates))
    assert estimates[0] < estimates[peak] and peak < len(estimates) - 2, estimates
    assert estimates[-1] < 0.9 * estimates[peak], estimates
    assert final["critic_steps"] == 200 and final["generator_steps"] == 40
    # the samples are not constant: the generator maps different noise to different images
    grid = plt_read(workdir / "samples" / "epoch_007.png")
    assert grid.std() > 5, grid.std()


def plt_read(path: Path) -> np.ndarray:
    import matplotlib.pyplot as plt

    return (plt.imread(path)[..., :3] * 255).astype(np.float32)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wgan_rerun_resumes_without_training(wgan_run, mnist_tiny, capsys):
    from experiments import lesson7_wgan

    workdir, final = wgan_run
    history = (workdir / "history.csv").read_text()
    capsys.readouterr()
    again = _run(lesson7_wgan, workdir, mnist_tiny, "--epochs", "8", "--max-images", "480")
    assert "resuming GAN training from checkpoint" in capsys.readouterr().out
    assert again == final and (workdir / "history.csv").read_text() == history


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wgan_gp_tiny_runs_without_nan(mnist_tiny, tmp_path):
    from experiments import lesson7_wgan

    final = _run(lesson7_wgan, tmp_path / "gp", mnist_tiny, "--loss", "wgan_gp", "--epochs", "2", "--opt", "adam",
                 "--lr", "1e-4", "--betas", "0", "0.9")
    history = pd.read_csv(tmp_path / "gp" / "history.csv")
    assert np.isfinite(history[["critic_loss", "critic_gradient_penalty", "generator_loss"]].values).all()
    assert final["steps"] == 12 and (tmp_path / "gp" / "samples" / "epoch_001.png").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wgan_kill_9_mid_epoch_then_rerun_ends_identical(mnist_tiny, tmp_path):
    from experiments import lesson7_wgan

    options = ["--epochs", "2", "--train.checkpoint-every-steps", "4"]
    _run(lesson7_wgan, tmp_path / "straight", mnist_tiny, *options)
    command = ["experiments.lesson7_wgan", "--tiny", *options, "--data-dir", str(mnist_tiny)]
    # 6 steps per epoch, saves at steps 4, 6 (epoch end), 8, 12: the 3rd is mid epoch 1, mid n_crit cycle
    killed_dir = tmp_path / "killed"
    killed = subprocess.run([sys.executable, str(CRASH), "3", *command, "--workdir", str(killed_dir)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert not (killed_dir / "metrics.json").exists()
    resumed = subprocess.run([sys.executable, "-m", *command, "--workdir", str(killed_dir)], cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(phase 0, epoch 1, batch 2)" in resumed.stdout, resumed.stdout[-2000:]
    step_a, arrays_a = _latest_arrays(tmp_path / "straight" / "gan_checkpoints")
    step_b, arrays_b = _latest_arrays(killed_dir / "gan_checkpoints")
    assert step_a == step_b == 12
    for a, b in zip(arrays_a, arrays_b, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (json.loads((killed_dir / "metrics.json").read_text())["final"]
            == json.loads((tmp_path / "straight" / "metrics.json").read_text())["final"])



# ---- lesson7_superres_gan: tiny run end to end, kill -9 in the GAN stage ------------------
SUPERRES_OPTIONS = ["--train.checkpoint-every-steps", "2"]


@pytest.fixture(scope="module")
def camvid_tiny():
    return shared_dataset("camvid_tiny")


@pytest.fixture(scope="module")
def superres_run(tmp_path_factory, camvid_tiny):
    from experiments import lesson7_superres_gan

    workdir = tmp_path_factory.mktemp("superres_gan") / "run"
    return workdir, _run(lesson7_superres_gan, workdir, camvid_tiny, *SUPERRES_OPTIONS)


# The U-Net's compile dominates (2 to 4 minutes each on the loaded 2-core machine).
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_superres_gan_tiny_runs_its_three_stages(superres_run):
    workdir, final = superres_run
    for name in ("history.csv", "gan_history.csv", "gan_losses.png", "compare.png", "samples/epoch_001.png",
                 "samples/epoch_002.png", "metrics.json"):
        assert (workdir / name).is_file(), name
    gan = pd.read_csv(workdir / "gan_history.csv")
    assert len(gan) == 3  # 1 critic-pretraining epoch, 2 GAN epochs
    assert gan.n_generator_steps[0] == 0 and gan.n_critic_steps[0] == 4
    assert final["gan_critic_steps"] > 0 and final["gan_generator_steps"] > 0
    assert np.isfinite(gan[["critic_loss", "critic_accuracy"]].values).all()
    assert np.isfinite(gan.generator_content[1:]).all() and np.isfinite(gan.generator_adversarial[1:]).all()
    for key in ("pretrained_psnr", "gan_psnr", "bicubic_psnr", "pretrained_ssim", "gan_ssim"):
        assert np.isfinite(final[key]), (key, final)
    assert 0 <= final["critic_pretrain_accuracy"] <= 1 and final["held_out_images"] == 8
    assert final["gan_psnr"] != final["pretrained_psnr"]  # the GAN stage changed the generator


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_superres_gan_kill_9_in_the_gan_stage_then_rerun_ends_identical(superres_run, camvid_tiny, tmp_path):
    straight_dir, final = superres_run
    workdir = tmp_path / "killed"
    command = ["experiments.lesson7_superres_gan", "--tiny", *SUPERRES_OPTIONS, "--workdir", str(workdir),
               "--data-dir", str(camvid_tiny)]
    # 4 steps per epoch, saves every 2 steps: the generator's 2 (Learner), the critic's 2, then the
    # 5th is mid-epoch in the GAN stage (GAN phase 1, epoch 0, batch 2)
    killed = subprocess.run([sys.executable, str(CRASH), "5", *command], cwd=REPO, capture_output=True, text=True,
                            timeout=1200)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert "stage 3" in killed.stdout and not (workdir / "metrics.json").exists()
    resumed = subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(phase 1, epoch 0, batch 2)" in resumed.stdout, resumed.stdout[-2000:]
    step_a, arrays_a = _latest_arrays(straight_dir / "gan_checkpoints")
    step_b, arrays_b = _latest_arrays(workdir / "gan_checkpoints")
    assert step_a == step_b
    for a, b in zip(arrays_a, arrays_b, strict=True):
        np.testing.assert_array_equal(a, b)
    assert json.loads((workdir / "metrics.json").read_text())["final"] == final

# ---- GANTrainer on toy models, in process: SIGTERM + resume, NaN stop ----------------------
TOY = dict(size=8, noise=8, bs=8)


def _toy_trainer(workdir, checkpoint_every=None):
    import jax.numpy as jnp
    import optax

    from jaxfast.learner import TrainConfig
    from jaxfast.gan.training import GANTrainer
    from jaxfast.losses import binary_cross_entropy, mse
    from jaxfast.models.gan import basic_critic, basic_generator
    from jaxfast.state import Task, create_train_state

    gen = create_train_state(basic_generator(8, 1, 8, 8), jnp.zeros((8, 1, 1, 8)), optax.identity(), Task(mse), 0)
    critic = create_train_state(basic_critic(8, 1, 8), jnp.zeros((8, 8, 8, 1)), optax.identity(),
                                Task(binary_cross_entropy), 1)
    config = TrainConfig(progress=False, tensorboard=False, checkpoint_every_steps=checkpoint_every)
    return GANTrainer(gen, critic, workdir, config, log=lambda _: None)


def _toy_fit(trainer, images, to_batch=None, epochs=2):
    import optax

    from jaxfast.data.loader import ArrayLoader
    from jaxfast.gan.steps import jit_gan_steps, wgan_loss
    from jaxfast.gan.switcher import FixedSwitcher

    loader = ArrayLoader(images, np.zeros(len(images), np.int32), 8, shuffle=True, drop_last=True)
    to_batch = to_batch or (lambda b: {"targets": b["inputs"], "mask": b["mask"]})
    tx = optax.rmsprop(1e-3)
    trainer.fit("toy", epochs, loader, jit_gan_steps(wgan_loss(noise_size=8)), FixedSwitcher(3, 1), tx, tx,
                {"lr": 1e-3}, to_batch)


def _toy_images(n=40):
    return np.tanh(np.random.default_rng(0).standard_normal((n, 8, 8, 1))).astype(np.float32)


def test_gan_trainer_sigterm_saves_and_the_rerun_ends_identical(tmp_path):
    import os
    import signal

    from jaxfast.gan.training import pair_arrays
    from jaxfast.preemption import Preempted

    straight = _toy_trainer(tmp_path / "straight")
    _toy_fit(straight, _toy_images())
    calls = []

    def term_at_7(batch):
        calls.append(1)
        if len(calls) == 7:  # step 7 of 10: epoch 1, batch 2, mid n_crit cycle
            os.kill(os.getpid(), signal.SIGTERM)
        return {"targets": batch["inputs"], "mask": batch["mask"]}

    with pytest.raises(Preempted, match="run the same command again"):
        _toy_fit(_toy_trainer(tmp_path / "stopped"), _toy_images(), term_at_7)
    resumed = _toy_trainer(tmp_path / "stopped")
    assert resumed.resuming
    _toy_fit(resumed, _toy_images())
    assert resumed.history.steps[:5] == straight.history.steps[:5]  # carried over from the checkpoint
    assert int(resumed.critic_state.step) == int(straight.critic_state.step) == 8
    a = jax.tree.leaves(pair_arrays(straight.gen_state, straight.critic_state))
    b = jax.tree.leaves(pair_arrays(resumed.gen_state, resumed.critic_state))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert resumed.switch_state == straight.switch_state


def test_gan_trainer_stops_cleanly_on_nan_and_keeps_the_last_good_weights(tmp_path):
    from jaxfast.errors import TrainingDiverged

    calls = []

    def nan_at_7(batch):
        calls.append(1)
        images = np.full_like(batch["inputs"], np.nan) if len(calls) == 7 else batch["inputs"]
        return {"targets": images, "mask": batch["mask"]}

    trainer = _toy_trainer(tmp_path / "nan", checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match=r"GAN critic loss is nan at step 6; training stopped; the last "
                                               r"checkpoint \(step 6\)"):
        _toy_fit(trainer, _toy_images(), nan_at_7, epochs=3)
    for leaf in jax.tree.leaves((trainer.gen_state.params, trainer.critic_state.params)):
        assert np.isfinite(np.asarray(leaf)).all()
