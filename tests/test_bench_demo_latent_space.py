"""bench/demo_latent_space.py runs end to end (tiny settings) and rejects bad arguments."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "bench" / "demo_latent_space.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=600)


def test_both_latent_spaces_train_and_print_a_table():
    for latents in ("plain", "whitened"):
        result = _run("--latents", latents, "--clips", "8", "--steps", "2", "--every", "2", "--videos", "2")
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stdout.splitlines()
        spectrum = [float(v) for v in lines[0].split("[")[1].rstrip("]").split(",")]
        if latents == "whitened":
            assert all(abs(v - 1) < 0.5 for v in spectrum)  # every colour direction weighs about the same
        else:
            assert spectrum[-1] > 10 * spectrum[-2]  # brightness (the background) dominates the plain cells
        step, seconds, loss, colour, direction, shape = lines[-1].strip("| ").split(" | ")
        assert step == "2" and float(loss) > 0 and colour.endswith("%") and direction.endswith("%")


def test_bad_arguments_are_rejected():
    result = _run("--latents", "plain", "--steps", "0")
    assert result.returncode == 2 and "--steps must be >= 1" in result.stderr
