"""bench/device.sh, the GPU benchmarks in order: its commands stay valid for the bench scripts they run
(argument names, sizes, modes), it takes per-part limits, it rejects unknown parts and options, and without
a GPU it stops at its first part."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device.sh"
sys.path.insert(0, str(ROOT / "bench"))
import gpu  # noqa: E402  (bench/gpu.py)
import memory  # noqa: E402  (bench/memory.py)

ALL_PARTS = ["env", "cuda", "gpu-16", "gpu-64", "gpu-576", "gpu-warm", "memory-64", "memory-256"]


def dry_run(*parts: str) -> list[tuple[str, int, str]]:
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", *parts], capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    return [(part, int(limit), command) for part, limit, command in rows]


def test_default_parts_and_limits():
    rows = dry_run()
    assert [part for part, _, _ in rows] == ["env", "cuda", "gpu-16", "memory-64"]
    assert all(limit > 0 for _, limit, _ in rows)
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--limit", "gpu-16=600", "gpu-16", "env"],
                         capture_output=True, text=True, check=True).stdout
    assert [line.split("\t")[:2] for line in out.splitlines()] == [["gpu-16", "600"], ["env", "30"]]


@pytest.mark.parametrize("part", ALL_PARTS[1:])
def test_bench_commands_parse(part):
    (_, limit, command), = dry_run(part)
    assert 0 < limit <= 9 * 60
    words = shlex.split(command)
    assert words[:2] == ["python3", f"bench/{part.split('-')[0]}.py".replace("cuda.py", "cuda_checks.py")]
    if part == "cuda":
        assert words[2:] == []  # CUDA, fp16: the default
    elif part.startswith("gpu"):
        args = gpu.build_parser().parse_args(words[2:])
        assert args.sizes and set(args.sizes) <= set(gpu.SIZES)
        assert args.json == f"$OUT/{part}.json" and not args.tiny
    else:
        args = memory.build_parser().parse_args(words[2:])
        assert args.modes and set(args.modes) <= set(memory.CUDA_MODES)
        assert not args.tiny


@pytest.mark.parametrize("args,words", [
    (["gpu-16", "gpu-1024"], ["unknown part 'gpu-1024'", "gpu-16"]),
    (["--limit", "gpu-16=soon"], ["'soon' is not a number"]),
    (["--limit", "gpu-1024=60"], ["unknown part 'gpu-1024'"]),
    (["--fast"], ["unknown option '--fast'"]),
])
def test_unknown_parts_and_bad_options_are_refused(args, words):
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert all(w in result.stderr for w in words), result.stderr


def test_without_a_gpu_it_stops_at_env(tmp_path):
    fake = tmp_path / "bin" / "nvidia-smi"  # a machine without a GPU, wherever the test runs
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    fake.chmod(0o755)
    env = dict(os.environ, OUT=str(tmp_path), PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 9
    assert "=== env: exit 9" in result.stdout
    assert "=== env" in result.stdout and "=== gpu-16" not in result.stdout
    assert (tmp_path / "env.log").is_file()


def test_cuda_checks_pass_on_the_cpu_and_catch_a_block_that_was_not_loaded(monkeypatch, capsys):
    """bench/cuda_checks.py (device.sh's first benchmark) on the CPU: every mode gives the resident
    video; with a streamed block never copied in, the streamed checks fail (NaN weights) and it exits 1."""
    import cuda_checks
    from videofusion.runtime.streamed import StreamedOffload
    assert cuda_checks.main(["--cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("| ok |") == 8 and "all 8 checks passed" in out

    load = StreamedOffload._load
    monkeypatch.setattr(StreamedOffload, "_load", lambda self, k: None if k == 7 else load(self, k))
    assert cuda_checks.main(["--cpu", "--only", "streamed offload"]) == 1
    out = capsys.readouterr().out
    assert out.count("FAILED |") == 3 and "3 of 3 checks failed" in out


def test_gpu_bench_rejects_a_json_path_in_a_missing_folder_before_measuring(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--tiny", "--json", str(tmp_path / "missing" / "r.json")])
    assert exit_info.value.code == 2 and "its folder does not exist" in capsys.readouterr().err
