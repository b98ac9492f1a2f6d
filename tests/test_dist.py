"""What we ship: the wheel works on its own, and the locks agree with pyproject.toml.

The wheel is built from a copy of the sources (``python -m build --no-isolation``: the
locked setuptools, no network) and installed into a new venv, run from a folder outside
the checkout. Its dependencies come from the test's own environment through a ``.pth``
line (this test may not download them); a ``.pth`` line does not run the ``.pth`` files
of the folder it adds, so the editable install of this checkout stays out of sight, and
the test checks that ``asyncembed`` is imported from the new venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
ENTRY_POINT = "asyncembed._cli:main"


def run(args: list[str | Path], cwd: Path, timeout: float = 60) -> str:
    """Run a command with none of this checkout's Python settings; its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A copy, since setuptools writes build/ and *.egg-info beside the sources.
    src = tmp_path_factory.mktemp("src")
    for path in [ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("LICEN[CS]E*")]:
        shutil.copy2(path, src / path.name)
    shutil.copytree(
        ROOT / "asyncembed",
        src / "asyncembed",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation"]
    run([*build, "--outdir", out, src], cwd=src, timeout=120)
    (built,) = out.glob("asyncembed-*-py3-none-any.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    env = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", env], cwd=env)
    python = env / "bin" / "python"
    # This environment's pip installs into the new venv (pip >= 22.3).
    install = ["install", "-q", "--no-deps", "--no-index"]
    run([sys.executable, "-m", "pip", "--python", python, *install, wheel], cwd=env, timeout=120)
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(run([python, "-c", where], cwd=env).strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "_deps_from_tests.pth").write_text(
        "".join(f"{path}\n" for path in sorted(ours)), encoding="utf-8"
    )
    yield env


def test_the_wheel_holds_the_package_its_data_and_its_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [
            line.removeprefix("Requires-Dist: ")
            for line in zf.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    for needed in (
        "asyncembed/__init__.py",
        "asyncembed/_cli.py",
        "asyncembed/py.typed",
        "asyncembed/data/corpus.txt",
        "asyncembed/testing/__init__.py",
    ):
        assert needed in names, f"{needed} is not in {wheel.name}"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))]
    assert f"asyncembed = {ENTRY_POINT}" in scripts
    runtime = sorted(str(Requirement(r)) for r in requires if "extra ==" not in r)
    assert runtime == sorted(str(Requirement(r)) for r in PROJECT["dependencies"])


@pytest.mark.slow
def test_the_installed_wheel_runs_from_its_own_venv(venv: Path, tmp_path: Path) -> None:
    python = venv / "bin" / "python"
    probe = """if True:
        import importlib.metadata as m, importlib.resources as r, json
        import asyncembed, asyncembed.testing
        root = r.files("asyncembed")
        scripts = m.entry_points(group="console_scripts", name="asyncembed")
        print(json.dumps({
            "file": asyncembed.__file__,
            "typed": root.joinpath("py.typed").is_file(),
            "corpus": str(root / "data" / "corpus.txt"),
            "scripts": [e.value for e in scripts],
        }))
    """
    found = json.loads(run([python, "-c", probe], cwd=tmp_path))
    assert Path(found["file"]).is_relative_to(venv), found["file"]
    assert found["typed"]
    assert found["scripts"] == [ENTRY_POINT]
    corpus = Path(found["corpus"])
    assert corpus.is_relative_to(venv) and corpus.stat().st_size > 0
    # Every dependency the wheel declares is met (here, by the test's environment).
    run([sys.executable, "-m", "pip", "--python", python, "check"], cwd=tmp_path)

    script = venv / "bin" / "asyncembed"
    assert "embed" in run([script, "--help"], cwd=tmp_path)
    out = tmp_path / "out.npy"
    model = "openai/text-embedding-3-small"
    options = ["--local", "--model", model, "--dimensions", "64", "--quiet"]
    run([script, "embed", corpus, "-o", out, *options], cwd=tmp_path)
    vectors = np.load(out)
    lines = corpus.read_text(encoding="utf-8").splitlines()
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(lines), 64)


def pins(lock: Path) -> dict[str, Version]:
    """The versions a lock installs here (its lines for other Pythons/platforms left out)."""
    found: dict[str, Version] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        if not line or line[0] in " #-":
            continue
        req = Requirement(line.rstrip(" \\"))
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            assert spec.operator == "==", line
            found[canonicalize_name(req.name)] = Version(spec.version)
    return found


def test_the_dev_lock_meets_pyproject() -> None:
    # A failure here: pyproject.toml changed without `make lock`.
    locked = pins(ROOT / "requirements" / "dev.lock")
    wanted = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["dev"]]
    for req in map(Requirement, wanted):
        version = locked.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is not in requirements/dev.lock"
        assert req.specifier.contains(version, prereleases=True), f"{req} but locked {version}"
    assert canonicalize_name(PROJECT["name"]) not in locked


def test_the_min_lock_holds_every_lower_bound() -> None:
    # make test-min runs the suite on these: each bound in pyproject.toml is a tested one.
    locked = pins(ROOT / "requirements" / "min.lock")
    bounded = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["parquet"]]
    for req in map(Requirement, bounded):
        (lowest,) = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert locked.get(canonicalize_name(req.name)) == lowest, f"{req}: run `make lock`"
