"""Run x-transformers' own test file against xtf through an import shim, and count what passes.

    .venv/bin/python scripts/run_xt_shim_tests.py PATH/TO/tests/test_x_transformers.py [--real] [-k EXPR]

The file is x-transformers' code and is not part of this repository: give its path at run time (e.g. from
a clone of github.com/lucidrains/x-transformers). The shim is a temporary package named `x_transformers`
(with the submodules real code imports from) that only re-exports xtf's public names; a name xtf does not
have resolves to a placeholder that raises `UnsupportedOptionError` naming it when used, so one missing
class fails only the tests that use it. The shim is put first on the path of the pytest subprocess only.
`--real` runs the same file against the installed x-transformers instead (the baseline).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SUBMODULES = (
    "x_transformers", "autoregressive_wrapper", "nonautoregressive_wrapper", "xl_autoregressive_wrapper",
    "continuous", "attend", "multi_input", "neo_mlp", "belief_state_wrapper", "next_latent_wrapper",
    "entropy_based_tokenizer", "dpo", "xval", "continuous_autoencoder", "xm_latent_decoder", "gpt_vae",
    "free_transformer", "up_wrapper", "full_bandwidth", "recirculation", "discover_wrapper", "gpt_lejepa",
)  # fmt: skip

SHIM = '''"""Import shim: xtf's public names under x-transformers' module names (generated; not a library)."""
import xtf_core as _xtf
from xtf_core.errors import UnsupportedOptionError as _Unsupported
from xtf_core.model.autoregressive import FILTER_LOGITS_FN, align_right, min_p, top_a, top_k, top_p

for _name in _xtf.__all__:
    globals()[_name] = getattr(_xtf, _name)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    class _Missing:
        def __init__(self, *args, **kwargs):
            raise _Unsupported(f"x_transformers shim: xtf has no {name!r}")

        def __class_getitem__(cls, item):
            return cls

    _Missing.__name__ = name
    return _Missing
'''


def make_shim(folder: Path) -> Path:
    package = folder / "x_transformers"
    package.mkdir()
    (package / "__init__.py").write_text(SHIM)
    for name in SUBMODULES:
        if name != "x_transformers":
            (package / f"{name}.py").write_text(SHIM)
    (package / "x_transformers.py").write_text(SHIM)
    return folder


def run(test_file: Path, real: bool, extra: list[str]) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        paths = [str(ROOT)]
        if not real:
            paths.insert(0, str(make_shim(Path(tmp))))
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        command = [sys.executable, "-m", "pytest", str(test_file), "-q", "-rA", "--tb=no", "-p", "no:cacheprovider",
                   "--rootdir", tmp, "-o", "addopts=", *extra]  # fmt: skip
        result = subprocess.run(command, cwd=tmp, env=env, stdout=subprocess.PIPE, text=True)
    lines = result.stdout.strip().splitlines()
    for line in lines:
        if line.startswith(("PASSED", "FAILED", "ERROR")):
            print(line[:200])
    tail = lines[-1] if lines else ""
    print(tail)
    counts = {key: int(n) for n, key in re.findall(r"(\d+) (passed|failed|errors?|skipped)", tail)}
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test_file", type=Path)
    parser.add_argument("--real", action="store_true", help="run against the installed x-transformers")
    args, extra = parser.parse_known_args(argv)
    counts = run(args.test_file.resolve(), args.real, extra)
    print(f"{'x-transformers' if args.real else 'xtf via the shim'}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
