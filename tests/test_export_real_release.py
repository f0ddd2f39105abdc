"""Exported state dicts load in the real x-transformers release (strict=True) and reproduce its outputs.

One release per era of the chain: each fixture is converted from its release, migrated to the current
version, exported back to that release, and run by the release itself in a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from legacy_fixtures import Fixture, all_fixtures
from xt_releases import run_in_release

from xtf_converters import xtransformers
from xtf_core.chain import default_chain, migrate_file
from xtf_core.checkpoint.stamp import Stamp

RUNNER = Path(__file__).parent / "release_runner.py"
PREFERRED = (
    "dec_plain",
    "enc_postnorm",
    "dec_rotary",
    "dec_scalenorm",
    "cont_enc",
    "dec_gqa_qknorm",
    "dec_tied",
    "dec_first",  # 0.0.9-0.0.28 take no attn_/ff_ kwargs: their fixtures use these minimal configs
    "enc_first",
)


def _one_release_per_era() -> dict[str, list[Fixture]]:
    chain = default_chain()
    by_node: dict[Stamp, dict[str, list[Fixture]]] = {}
    for fixture in all_fixtures():
        if fixture.refused or fixture.config["class"] == "XTransformer":
            continue
        node = chain.node_for(Stamp("x-transformers", fixture.release))
        by_node.setdefault(node, {}).setdefault(fixture.release, []).append(fixture)
    picked = {}
    for releases in by_node.values():
        release = max(releases, key=lambda r: len(releases[r]))
        picked[release] = [f for f in releases[release] if f.name in PREFERRED]
    return picked


ERAS = _one_release_per_era()


@pytest.mark.parametrize("release", sorted(ERAS), ids=str)
def test_real_release_loads_the_export_and_reproduces_its_outputs(tmp_path: Path, release: str) -> None:
    jobs = []
    for fixture in ERAS[release]:
        stamped, current = (
            tmp_path / f"{fixture.name}.safetensors",
            tmp_path / f"{fixture.name}.now.safetensors",
        )
        xtransformers.convert(fixture.pt, stamped, release=release, config=fixture.config)
        migrate_file(stamped, current)
        exported = tmp_path / f"{fixture.name}.pt"
        report = xtransformers.export(current, exported, release=release)
        jobs.append(
            {
                "pt": str(exported),
                "config": report.config,
                "io": str(fixture.pt.with_suffix("").with_suffix(".io.safetensors")),
                "forward_kwargs": fixture.meta["forward_kwargs"],
                "output": fixture.meta["output"],
            }
        )
    job_file = tmp_path / "jobs.json"
    job_file.write_text(json.dumps(jobs))
    result = run_in_release(release, str(RUNNER), str(job_file))
    diffs = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(diffs) == len(jobs) > 0
    worst = {Path(k).stem: v for k, v in diffs.items() if v > 1e-4}
    assert not worst, f"x-transformers {release} computes something else from the export: {worst}"
