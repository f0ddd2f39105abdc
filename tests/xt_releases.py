"""Install real x-transformers releases side by side and run code inside one of them.

Each release lives in its own ``pip install --no-deps --target`` directory under
``<repo>/.xt-releases/<version>`` (git-ignored), or under ``$XTF_RELEASES_DIR/<version>``. The current interpreter supplies torch, einops,
einx, loguru and torch-einops-utils; a release's source tree is put first on ``PYTHONPATH`` so it
shadows any x-transformers installed in the environment.

Used by ``tests/fixtures/legacy/generate.py`` (corpus generator) and by the release tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# XTF_RELEASES_DIR moves the installs out of the checkout (scripts/test.sh points it at a user cache, so a fresh
# clone on the same machine, CI's included, reuses what an earlier run installed)
DEFAULT_ROOT = Path(os.environ.get("XTF_RELEASES_DIR") or REPO_ROOT / ".xt-releases")

# Extra distributions an old release imports at module level, beyond what the venv provides.
# Installed (without deps) into the release's own directory.
EXTRA_DEPS: dict[str, list[str]] = {}

_MARKER = ".xtf-installed"


def release_dir(version: str, root: Path | None = None) -> Path:
    return Path(root or DEFAULT_ROOT) / version


def _pip(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip failed ({' '.join(args)}):\n{proc.stdout}\n{proc.stderr}")


def ensure_release(version: str, root: Path | None = None) -> Path:
    """Install ``x-transformers==version`` into ``<root>/<version>`` once; return that directory.

    Idempotent: a completed install leaves a marker file and is reused without network access.
    """
    target = release_dir(version, root)
    marker = target / _MARKER
    if marker.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    _pip(
        [
            "install",
            "--no-deps",
            "--no-compile",
            "--upgrade",
            "--target",
            str(target),
            f"x-transformers=={version}",
        ]
    )
    extra = list(EXTRA_DEPS.get(version, []))
    src = target / "x_transformers"
    if not src.is_dir():
        raise RuntimeError(f"x-transformers=={version}: no x_transformers package in {target}")
    text = "\n".join(p.read_text(errors="replace") for p in src.glob("*.py"))
    if re.search(r"^\s*(from|import) entmax\b", text, re.M) and "entmax" not in extra:
        extra.append("entmax")
    if extra:
        _pip(["install", "--no-deps", "--no-compile", "--upgrade", "--target", str(target), *extra])
    marker.write_text(json.dumps({"version": version, "extra": extra}))
    return target


def release_env(version: str, root: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    path = str(ensure_release(version, root))
    env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_in_release(
    version: str,
    script: str,
    *args: str,
    root: Path | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``python -c script *args`` with release ``version`` importable as ``x_transformers``.

    ``script`` may also be a path to a ``.py`` file. The subprocess runs with the release
    directory as its working directory, so nothing from the repo shadows the release.
    """
    env = release_env(version, root)
    if script.endswith(".py") and "\n" not in script and Path(script).is_file():
        cmd = [sys.executable, str(Path(script).resolve()), *args]
    else:
        cmd = [sys.executable, "-c", script, *args]
    proc = subprocess.run(
        cmd, env=env, cwd=str(release_dir(version, root)), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"x-transformers=={version}: subprocess failed (rc={proc.returncode})\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def release_source(version: str, root: Path | None = None) -> str:
    """Concatenated source of the release's ``x_transformers`` package (for kwarg checks)."""
    src = ensure_release(version, root) / "x_transformers"
    return "\n".join(p.read_text(errors="replace") for p in sorted(src.glob("*.py")))


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))
