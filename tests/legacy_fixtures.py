"""Access to the fixture corpus of real x-transformers releases (tests/fixtures/legacy)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from packaging.version import Version
from safetensors.torch import load_file

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
MASKING_CHANGED = Version("1.4.0")  # before: outputs at padded positions differ (padded positions only)

# Fixtures the chain refuses on purpose, with the reason it gives.
REFUSED = {
    ("0.29.0", None): "experimental release",
    ("1.16.4", None): "CascadingHeads",
    ("0.0.29", "dec_ffglu"): "ff_glu: x-transformers before 0.6.4",  # x * gelu(x): no later release has it
    ("0.6.3", "dec_ffglu"): "ff_glu: x-transformers before 0.6.4",
    (
        "0.28.4",
        "dec_qknorm",
    ): "unexpected 'attn_layers.layers.0.1.scale'",  # learned qk-norm scale, unsupported
}


@dataclass(frozen=True)
class Fixture:
    release: str
    name: str

    @property
    def id(self) -> str:
        return f"{self.release}/{self.name}"

    @property
    def pt(self) -> Path:
        return LEGACY / self.release / f"{self.name}.pt"

    @cached_property
    def meta(self) -> dict:
        return json.loads((LEGACY / self.release / f"{self.name}.json").read_text())

    @property
    def config(self) -> dict:
        return self.meta["config"]

    @cached_property
    def io(self) -> dict[str, torch.Tensor]:
        return load_file(str(LEGACY / self.release / f"{self.name}.io.safetensors"))

    @property
    def refused(self) -> str | None:
        return REFUSED.get((self.release, None)) or REFUSED.get((self.release, self.name))

    def inputs(self) -> dict:
        return {
            key: self.io[value] if isinstance(value, str) else [self.io[v] for v in value]
            for key, value in self.meta["forward_kwargs"].items()
        }

    @torch.no_grad()
    def run(self, model: torch.nn.Module) -> torch.Tensor:
        """The model's output on the fixture's inputs, called as the release was called."""
        kw = self.inputs()
        if self.config["class"] == "XTransformer":
            enc = model.encoder(kw["src"], mask=kw["src_mask"], return_embeddings=True)
            return model.decoder.net(kw["tgt"], context=enc, context_mask=kw["src_mask"])
        out = model(kw.pop("x"), **kw)
        return out[0] if isinstance(out, tuple) else out

    def max_diff(self, output: torch.Tensor) -> float:
        """Largest difference from the release's own output (padded positions excluded before 1.4.0)."""
        reference = self.io[self.meta["output"]]
        mask = self.inputs().get("mask")
        if mask is not None and Version(self.release) < MASKING_CHANGED:
            output, reference = output[mask], reference[mask]
        return (output - reference).abs().max().item()


def all_fixtures() -> list[Fixture]:
    manifest = json.loads((LEGACY / "manifest.json").read_text())
    return [Fixture(entry["release"], entry["config"]) for entry in manifest["fixtures"]]
