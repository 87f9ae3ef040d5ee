#!/usr/bin/env python3
"""Run diffusers' own unit test files twice, with diffusers and with videofusion swapped in, and compare.

    python tools/diffusers_tests/run.py /path/to/diffusers            # all selected files
    python tools/diffusers_tests/run.py /path/to/diffusers --only ddim --only unet_3d

See README.md beside this file.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

SCHEDULER_FILES = [f"tests/schedulers/test_scheduler_{n}.py" for n in (
    "ddim", "ddpm", "deis", "dpm_multi", "dpm_single", "euler", "euler_ancestral", "heun", "lms", "pndm",
    "unipc")]
MODEL_FILES = ["tests/models/unets/test_models_unet_3d_condition.py",
               "tests/models/autoencoders/test_models_autoencoder_kl.py"]
PIPELINE_FILE = "tests/pipelines/text_to_video_synthesis/test_text_to_video.py"
FILES = SCHEDULER_FILES + MODEL_FILES + [PIPELINE_FILE]

# diffusers deleted its text-to-video tests in #11879 (commit bc55b631fdf3d0961c27ec548b1155d1fccf0424);
# this is its parent, the last commit that has them
PIPELINE_TEST_COMMIT = "15d50f16f2320b669c77eae2034b6612c22bd2ef"
PIPELINE_TEST_FILES = ["tests/pipelines/text_to_video_synthesis/__init__.py", PIPELINE_FILE]

# diffusers' source files behind the tested classes (under src/diffusers): the tree stands in for the installed
# release when these are the same (PyPI's sdist ships no tests, so a tree at the release tag is not always at hand)
SOURCES = [f"schedulers/scheduling_{n}.py" for n in (
    "ddim", "ddpm", "deis_multistep", "dpmsolver_multistep", "dpmsolver_singlestep", "euler_discrete",
    "euler_ancestral_discrete", "heun_discrete", "lms_discrete", "pndm", "unipc_multistep")] + [
    "models/unets/unet_3d_condition.py", "models/unets/unet_3d_blocks.py", "models/autoencoders/autoencoder_kl.py",
    "models/autoencoders/vae.py", "models/attention_processor.py",
    "pipelines/deprecated/text_to_video_synthesis/pipeline_text_to_video_synth.py"]

# Tests deselected with -k. Only tests that need a network or a GPU and do not skip themselves on a
# CPU-only machine belong here; everything else runs (tests that need a GPU skip themselves on the CPU).
K_EXCLUDE = {
    # single-file loading: downloads full (gated) checkpoints from the Hub; without a Hub token the
    # mixin skips itself anyway
    "tests/models/autoencoders/test_models_autoencoder_kl.py": ["SingleFile"],
}
# deselected only when the Hugging Face Hub cannot be reached: they load fusing/autoencoder-kl-dummy
K_EXCLUDE_OFFLINE = {
    "tests/models/autoencoders/test_models_autoencoder_kl.py": ["test_from_pretrained_hub",
                                                                "test_output_pretrained"],
}

# extra packages diffusers' test files import (its "test" extra, the part these files need), installed
# with --no-deps into a folder of their own and put on PYTHONPATH: the project's environment is left as is
TEST_DEPS = ["parameterized", "requests-mock", "pytest-timeout", "torchsde", "trampoline", "accelerate",
             "psutil"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tree", help="diffusers source tree (a clone of github.com/huggingface/diffusers)")
    ap.add_argument("--python", default=_default_python(), help="interpreter with torch, diffusers and "
                    "videofusion installed (default: the repository's .venv, else this one)")
    ap.add_argument("--out", default=None, help="folder for logs, JUnit XML and the summary "
                    "(default: /tmp/videofusion-diffusers-tests/<time>)")
    ap.add_argument("--deps", default=os.path.expanduser("~/.cache/videofusion-diffusers-tests/deps"),
                    help="folder for diffusers' extra test packages")
    ap.add_argument("--no-install", action="store_true", help="do not pip-install the extra test packages")
    ap.add_argument("--only", action="append", default=[], help="run only files whose path contains this "
                    "(repeatable)")
    ap.add_argument("--mode", choices=["both", "diffusers", "videofusion"], default="both")
    ap.add_argument("--test-timeout", type=int, default=600, help="seconds per test (pytest-timeout)")
    ap.add_argument("--file-timeout", type=int, default=1800, help="seconds per test file and mode")
    ap.add_argument("--keep-deprecated-skip", action="store_true",
                    help="keep diffusers' skip of PipelineTesterMixin tests for deprecated pipelines "
                    "(then diffusers' TextToVideoSDPipeline skips them)")
    ap.add_argument("--online", choices=["auto", "yes", "no"], default="auto",
                    help="whether the Hugging Face Hub is reachable (auto: try it)")
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = []
    if "--" in argv:  # everything after -- goes to pytest as it is
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    ap.epilog = "Arguments after -- are passed to pytest (e.g. -- -x -k test_step_shape)."
    args = ap.parse_args(argv)
    args.pytest_args = pytest_args

    tree = os.path.abspath(args.tree)
    if not os.path.isdir(os.path.join(tree, "tests")):
        ap.error(f"{tree} has no tests/ folder: pass the root of a diffusers source tree")
    out = os.path.abspath(args.out or os.path.join("/tmp/videofusion-diffusers-tests", time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(out, exist_ok=True)

    deps = os.path.abspath(args.deps)
    if not args.no_install:
        _install_deps(args.python, deps)
    have_timeout = _have_deps(args.python, deps, ("pytest_timeout",))
    restored = _restore_pipeline_test(tree)

    files = [f for f in FILES if not args.only or any(o in f for o in args.only)]
    modes = ["diffusers", "videofusion"] if args.mode == "both" else [args.mode]
    online = {"yes": True, "no": False}.get(args.online)
    if online is None:
        online = _hub_reachable()

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HERE, deps] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for k in ("RUN_SLOW", "RUN_NIGHTLY", "RUN_COMPILE", "VF_MODE"):
        env.pop(k, None)
    if not online:
        env["HF_HUB_OFFLINE"] = "1"  # fail at once instead of retrying a Hub that cannot be reached

    print(f"diffusers tree: {tree} ({_tree_revision(tree)}, version {_tree_version(tree)})")
    installed = subprocess.run([args.python, "-c", "import importlib.metadata as m; print(m.version('diffusers'))"],
                               capture_output=True, text=True).stdout.strip()
    print(f"installed diffusers (the one tested): {installed or '?'}")
    if installed and _tree_version(tree) not in ("?", installed):
        print("note: the tree's version differs from the installed diffusers; its test files may expect "
              "another diffusers (clone the tag that matches the installed version)")
    print(_compare_sources(tree, args.python))
    print(f"pipeline test: {restored}")
    print(f"python: {args.python}")
    print(f"Hub reachable: {'yes' if online else 'no (HF_HUB_OFFLINE=1, stand-in tokenizer)'}")
    print(f"output: {out}")
    for f in files:
        excluded = K_EXCLUDE.get(f, []) + ([] if online else K_EXCLUDE_OFFLINE.get(f, []))
        if excluded:
            print(f"deselected in {f}: {', '.join(excluded)}")
    sys.stdout.flush()

    results: dict = {}
    t_start = time.time()
    for f in files:
        if not os.path.exists(os.path.join(tree, f)):
            print(f"missing: {f}")
            results[f] = {m: {"missing": True} for m in modes}
            continue
        results[f] = {}
        for mode in modes:
            stem = f"{mode}--{f.replace('/', '__')[:-3]}"
            xml = os.path.join(out, stem + ".xml")
            log = os.path.join(out, stem + ".log")
            cmd = [args.python, "-m", "pytest", f, "-p", "no:cacheprovider", "-p", "videofusion_swap",
                   f"--vf-mode={mode}", f"--junitxml={xml}", "-o", "junit_family=xunit1", "-rfEs"]
            if have_timeout:
                cmd.append(f"--timeout={args.test_timeout}")
            if not args.keep_deprecated_skip:
                cmd.append("--vf-unskip-deprecated")
            if not online:
                cmd.append("--vf-standin-tokenizer")
            excluded = K_EXCLUDE.get(f, []) + ([] if online else K_EXCLUDE_OFFLINE.get(f, []))
            if excluded:
                cmd += ["-k", " and ".join(f"not {k}" for k in excluded)]
            cmd += args.pytest_args
            t0 = time.time()
            with open(log, "w") as fh:
                fh.write("$ " + " ".join(cmd) + "\n")
                fh.flush()
                try:
                    rc = subprocess.run(cmd, cwd=tree, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                        timeout=args.file_timeout).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            r = _parse_junit(xml) if os.path.exists(xml) else {"tests": {}, "no_xml": True}
            r.update(rc=rc, seconds=round(time.time() - t0, 1), log=log)
            with open(log, errors="replace") as fh:
                stale = [line.strip() for line in fh if "class still bound" in line]
            if stale:  # the swap missed a binding: the videofusion column is not all videofusion
                print("HARNESS WARNING: " + stale[0])
                r["harness_warning"] = stale[0]
            results[f][mode] = r
            c = _counts(r)
            print(f"{mode:11s} {f}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped, "
                  f"{c['errors']} errors ({r['seconds']:.0f} s{', rc=' + str(rc) if rc not in (0, 1) else ''})")
            sys.stdout.flush()
    total = time.time() - t_start

    report = _report(results, modes, total)
    print()
    print(report)
    with open(os.path.join(out, "summary.md"), "w") as fh:
        fh.write(report + "\n")
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    print(f"\nlogs, JUnit XML, summary.md and results.json: {out}")
    return 0


def _default_python() -> str:
    venv = os.path.join(REPO, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def _have_deps(python: str, deps: str, modules=("parameterized", "requests_mock", "pytest_timeout", "torchsde",
                                                "trampoline", "accelerate", "psutil")) -> bool:
    probe = subprocess.run([python, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import importlib.util as u; "
                            "print(all(u.find_spec(m) for m in sys.argv[2:]))", deps, *modules],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def _install_deps(python: str, deps: str) -> None:
    if _have_deps(python, deps):
        return
    os.makedirs(deps, exist_ok=True)
    print(f"installing diffusers' test packages into {deps}: {' '.join(TEST_DEPS)}")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target", deps]
                   + TEST_DEPS, check=True)


def _restore_pipeline_test(tree: str) -> str:
    """diffusers' text-to-video pipeline test, deleted upstream: put it back into the tree if missing."""
    dest = os.path.join(tree, PIPELINE_FILE)
    if os.path.exists(dest):
        return f"{PIPELINE_FILE} (present in the tree)"
    git = ["git", "-C", tree]
    if subprocess.run(git + ["rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        return f"missing: {tree} is not a git clone; see README.md to restore {PIPELINE_FILE}"
    have = subprocess.run(git + ["cat-file", "-e", f"{PIPELINE_TEST_COMMIT}^{{commit}}"], capture_output=True)
    if have.returncode != 0:  # a shallow clone: fetch that one commit
        subprocess.run(git + ["fetch", "--quiet", "--depth", "1", "origin", PIPELINE_TEST_COMMIT],
                       capture_output=True)
    for path in PIPELINE_TEST_FILES:
        shown = subprocess.run(git + ["show", f"{PIPELINE_TEST_COMMIT}:{path}"], capture_output=True)
        if shown.returncode != 0:
            return f"missing: could not read {path} at {PIPELINE_TEST_COMMIT[:12]} ({shown.stderr.decode().strip()})"
        os.makedirs(os.path.dirname(os.path.join(tree, path)), exist_ok=True)
        with open(os.path.join(tree, path), "wb") as fh:
            fh.write(shown.stdout)
    return f"{PIPELINE_FILE} restored from {PIPELINE_TEST_COMMIT[:12]}"


def _tree_revision(tree: str) -> str:
    r = subprocess.run(["git", "-C", tree, "describe", "--tags", "--always"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "not a git clone"


def _tree_version(tree: str) -> str:
    try:
        with open(os.path.join(tree, "src", "diffusers", "__init__.py")) as fh:
            for line in fh:
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return "?"


def _compare_sources(tree: str, python: str) -> str:
    """A line saying which of :data:`SOURCES` in ``tree`` are byte for byte the installed diffusers' files,
    and how many lines differ in the others."""
    import difflib
    r = subprocess.run([python, "-c", "import diffusers, os; print(os.path.dirname(diffusers.__file__))"],
                       capture_output=True, text=True)
    installed = r.stdout.strip()
    if r.returncode != 0 or not installed:
        return "sources: the installed diffusers could not be found"
    differ = []
    for rel in SOURCES:
        paths = (os.path.join(tree, "src", "diffusers", rel), os.path.join(installed, rel))
        try:
            texts = [open(p, encoding="utf-8").read().splitlines() for p in paths]
        except OSError:
            differ.append(f"{rel} (missing)")
            continue
        if texts[0] != texts[1]:
            changed = sum(1 for line in difflib.unified_diff(*texts, lineterm="", n=0)
                          if line[:1] in "+-" and line[:3] not in ("+++", "---"))
            differ.append(f"{rel} ({changed} lines)")
    same = len(SOURCES) - len(differ)
    return (f"sources of the tested classes: {same} of {len(SOURCES)} files identical to the installed diffusers"
            + (f"; differ: {', '.join(differ)}" if differ else ""))


def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _parse_junit(path: str) -> dict:
    tests = {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return {"tests": {}, "no_xml": True}
    for tc in root.iter("testcase"):
        name = tc.get("name", "")
        cls = tc.get("classname", "")
        tid = f"{cls}::{name}" if cls else name
        outcome, message = "passed", ""
        tags = {child.tag: child for child in tc if child.tag in ("failure", "error", "skipped")}
        # pytest's own counts: a failure in the test's call is "failed"; an error in its setup or
        # teardown, or in collecting the file, is "error"
        for tag, label in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            if tag in tags:
                child = tags[tag]
                outcome, message = label, (child.get("message") or child.text or "").strip()
                break
        tests[tid] = {"outcome": outcome, "message": _first_line(message)}
    return {"tests": tests}


def _first_line(msg: str) -> str:
    for line in (msg or "").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _counts(r: dict) -> dict:
    c = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for t in r.get("tests", {}).values():
        c[{"passed": "passed", "failed": "failed", "skipped": "skipped", "error": "errors"}[t["outcome"]]] += 1
    if r.get("no_xml") or r.get("rc") == "timeout":
        c["errors"] += 1
    return c


def _test_name(tid: str) -> str:
    cls, _, name = tid.partition("::")
    return f"{cls.rsplit('.', 1)[-1]}::{name}" if name else cls


def _short(f: str) -> str:
    return f.replace("tests/", "").replace(".py", "")


def _report(results: dict, modes: list, total: float) -> str:
    lines = ["| test file | " + " | ".join(f"{m}: pass / fail / skip / err (s)" for m in modes) + " |",
             "|---|" + "---|" * len(modes)]
    sums = {m: {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "seconds": 0.0} for m in modes}
    for f, per in results.items():
        cells = []
        for m in modes:
            r = per.get(m, {})
            if r.get("missing"):
                cells.append("missing")
                continue
            c = _counts(r)
            for k in c:
                sums[m][k] += c[k]
            sums[m]["seconds"] += r.get("seconds", 0)
            extra = " TIMEOUT" if r.get("rc") == "timeout" else ""
            cells.append(f"{c['passed']} / {c['failed']} / {c['skipped']} / {c['errors']} "
                         f"({r.get('seconds', 0):.0f}){extra}")
        lines.append(f"| {_short(f)} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(
        f"**{s['passed']} / {s['failed']} / {s['skipped']} / {s['errors']}** ({s['seconds']:.0f})"
        for s in sums.values()) + " |")
    lines.append(f"\nwall time: {total:.0f} s")

    if modes == ["diffusers", "videofusion"]:
        regress, skipped_fail, better, both_differ, absent = [], [], [], [], []
        for f, per in results.items():
            d, v = per["diffusers"].get("tests", {}), per["videofusion"].get("tests", {})
            for tid, dt in d.items():
                vt = v.get(tid)
                if vt is None:
                    if dt["outcome"] == "passed":
                        absent.append((f, tid, "not collected with videofusion"))
                    continue
                if dt["outcome"] == "passed" and vt["outcome"] in ("failed", "error"):
                    regress.append((f, tid, vt["message"]))
                elif dt["outcome"] == "skipped" and vt["outcome"] in ("failed", "error"):
                    skipped_fail.append((f, tid, f"{vt['message']} (diffusers skips: {dt['message']})"))
                elif dt["outcome"] in ("failed", "error") and vt["outcome"] == "passed":
                    better.append((f, tid, dt["message"]))
                elif dt["outcome"] in ("failed", "error") and vt["outcome"] in ("failed", "error") \
                        and dt["message"] != vt["message"]:
                    both_differ.append((f, tid, f"diffusers: {dt['message']} | videofusion: {vt['message']}"))
            for tid, vt in v.items():
                if tid not in d and vt["outcome"] in ("failed", "error"):
                    absent.append((f, tid, "only collected with videofusion: " + vt["message"]))
        for title, rows in (
                ("Pass with diffusers, fail with videofusion", regress),
                ("Skipped with diffusers, fail with videofusion", skipped_fail),
                ("Pass with videofusion, fail with diffusers", better),
                ("Fail with both, with different messages", both_differ),
                ("Collected in one mode only", absent)):
            lines.append(f"\n### {title} ({len(rows)})\n")
            for f, tid, msg in rows:
                lines.append(f"- `{_short(f)}::{_test_name(tid)}`: {msg}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
