"""Bring unstamped x-transformers state dicts into the stamped format, and export stamped files back.

Era detection uses the chain itself: the file is tried as if stamped at each layout node of the
x-transformers lineage; the nodes where its names and shapes fit the config are its candidate eras. If
those candidates do not all compute the same function for this config, the release must be named.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from xtf_core.checkpoint.stamp import KEY_FINGERPRINT, Stamp, canonical_json, current_stamp, stamped_metadata
from xtf_core.errors import ConversionError, XtfError

from .layout import compare_layouts, layout_at
from .torch_pickle import read_state_dict

LINEAGE = "x-transformers"
FIRST_SUPPORTED = Version("0.10.0")
LAST_KNOWN = Version("2.31.10")
BROKEN_RELEASES = {
    "0.11.0": "a one-release layout (depthwise-convolution queries, reverted in 0.11.1) no later release kept",
    "0.20.0": "a broken release (Residual.__init__ TypeError on construction)",
    "0.21.0": "a broken release (pre-norm blocks built without their norm, fixed in 0.21.1)",
    "0.29.0": "an experimental release (feed-forward input layer commented out, doubled to_k)",
    "0.29.1": "an experimental release (feed-forward input layer commented out, doubled to_k)",
    "1.16.2": "CascadingHeads was applied unconditionally (outputs differ from every other release)",
    "1.16.3": "CascadingHeads was applied unconditionally (outputs differ from every other release)",
    "1.16.4": "CascadingHeads was applied unconditionally (outputs differ from every other release)",
    "1.31.2": "a broken release (TypeError on construction)",
}
DETECTION_LIMIT_BYTES = 512 * 1024 * 1024


def check_release(release: str) -> Stamp:
    """A release the chain can take a file from, or a ConversionError saying why not."""
    try:
        version = Version(release)
    except Exception as exc:
        raise ConversionError(f"{release!r} is not a release number (expected e.g. 1.26.0)") from exc
    if version < FIRST_SUPPORTED:
        raise ConversionError(
            f"x-transformers {release} is older than {FIRST_SUPPORTED}, the oldest release xtf converts"
        )
    if version > LAST_KNOWN:
        raise ConversionError(
            f"x-transformers {release} is newer than {LAST_KNOWN}, the newest release this xtf knows; upgrade xtf"
        )
    if str(version) in BROKEN_RELEASES:
        raise ConversionError(
            f"x-transformers {release} was {BROKEN_RELEASES[str(version)]}; name the release you trained with"
        )
    return Stamp(LINEAGE, str(version))


def parse_source(text: str) -> str | None:
    """`x-transformers==1.26.0` -> '1.26.0'; `x-transformers` -> None (detect)."""
    name, sep, release = text.partition("==")
    if name.strip() != LINEAGE:
        raise ConversionError(
            f"--from {text!r}: only x-transformers checkpoints are converted (x-transformers[==RELEASE])"
        )
    return release.strip() if sep else None


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read the config ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(config.get("class"), str):
        raise ConversionError(
            f'{path}: the config must be a JSON object with a "class", e.g. {{"class": "TransformerWrapper", ...}}'
        )
    return config


def _fit(tensors: Mapping[str, Any], config: dict, stamp: Stamp, where: str) -> tuple[dict, dict, Any]:
    """Migrate as if stamped `stamp` and build the current model on the result (names and shapes checked);
    returns (tensors, spec, model) or raises."""
    from xtf_core.chain import migrate_in_memory
    from xtf_core.loading import build_with_state

    migrated, spec, _ = migrate_in_memory(dict(tensors), config, stamp, current_stamp())
    return migrated, spec, build_with_state(spec, migrated, where)


@dataclass
class Detection:
    release: str
    why: str


def _node_ranges() -> list[tuple[Stamp, str]]:
    from xtf_core.chain import default_chain

    nodes = [n for n in default_chain().nodes if n.lineage == LINEAGE]
    ranges = []
    for i, node in enumerate(nodes):
        last = f"before {nodes[i + 1].version}" if i + 1 < len(nodes) else f"up to {LAST_KNOWN}"
        ranges.append((node, f"{node.version} ({last})"))
    return ranges


def detect_release(tensors: Mapping[str, Any], config: dict, where: str) -> Detection:
    """The era whose exact layout (names and shapes) the file has; refuses when such eras compute differently."""
    import torch

    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if size > DETECTION_LIMIT_BYTES:
        raise ConversionError(
            f"{where}: too large to detect its release by trial; name it: --from x-transformers==RELEASE"
        )
    layout = {name: tuple(t.shape) for name, t in tensors.items()}
    fits: list[tuple[Stamp, str, dict, dict]] = []
    for node, label in _node_ranges():
        try:
            if layout_at(node, config) != layout:
                continue
            migrated, spec, _ = _fit(tensors, config, node, where)
        except (XtfError, RuntimeError, ValueError, TypeError, KeyError, NotImplementedError):
            continue
        fits.append((node, label, migrated, spec))
    if not fits:
        raise ConversionError(
            f"{where}: its tensor names and shapes fit no x-transformers release from {FIRST_SUPPORTED} to "
            f"{LAST_KNOWN} for this config; check the config (dim, depth, heads, options) or name the release"
        )
    first_node, _, first_tensors, first_spec = fits[0]
    labels = ", ".join(label for _, label, _, _ in fits)
    for _node, _label, migrated, spec in fits[1:]:
        same = (
            spec == first_spec
            and migrated.keys() == first_tensors.keys()
            and all(torch.equal(migrated[k], first_tensors[k]) for k in migrated)
        )
        if not same:
            raise ConversionError(
                f"{where}: the layout fits several x-transformers eras ({labels}) that compute differently for "
                f"this config; name the release you trained with: --from x-transformers==RELEASE"
            )
    return Detection(
        first_node.version,
        f"tensor names and shapes are those of x-transformers {labels}; "
        + ("all compute the same function for this config" if len(fits) > 1 else "no other era has them"),
    )


def _compare_layout(tensors: Mapping[str, Any], config: dict, stamp: Stamp, where: str) -> None:
    """Name the first tensor whose presence or shape disagrees with what the config builds at `stamp`."""
    try:
        expected = layout_at(stamp, config)
    except XtfError as exc:
        raise ConversionError(
            f"{where}: the config cannot be read as x-transformers {stamp.version}: {exc}"
        ) from exc
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    compare_layouts(found, expected, where, f"x-transformers {stamp.version}")


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    release: str | None,
    config: dict[str, Any],
    key: str | None = None,
) -> dict[str, Any]:
    """Write `src` (a torch pickle of an x-transformers state dict) as a stamped safetensors file."""
    from xtf_core.fingerprint import compute_fingerprint
    from xtf_core.loading import dedupe_shared, write_tensors

    state, found_at = read_state_dict(src, key)
    where = str(src)
    if release is None:
        detection = detect_release(state, config, where)
        release, why = detection.release, detection.why
    else:
        why = "named with --from"
    stamp = check_release(release)
    _compare_layout(state, config, stamp, where)
    try:
        _, _, model = _fit(state, config, stamp, where)
    except XtfError as exc:
        raise ConversionError(f"{exc} (as x-transformers {stamp.version} with the given config)") from exc
    tensors, tied = dedupe_shared({k: v.contiguous() for k, v in state.items()})
    metadata = stamped_metadata({}, stamp, config, tied=tied)
    # the function the release computed, recorded so `xtf verify` can check every later migration
    metadata[KEY_FINGERPRINT] = canonical_json(compute_fingerprint(model))
    write_tensors(Path(out), tensors, metadata)
    return {
        "source": where,
        "state_dict_at": found_at,
        "stamp": str(stamp),
        "why": why,
        "tensors": len(tensors),
        "output": str(out),
    }


def export(src: str | os.PathLike[str], out: str | os.PathLike[str], *, release: str) -> dict[str, Any]:
    """Write a stamped checkpoint as the plain state dict x-transformers `release` loads (strict=True)."""
    import torch

    from xtf_core.checkpoint.atomic import atomic_files
    from xtf_core.checkpoint.io import write_all
    from xtf_core.loading import load_state

    target = check_release(release)
    tensors, spec, info = load_state(src, target=target)
    leftover = sorted(_legacy_flags(spec))
    if leftover:
        raise ConversionError(
            f"{src}: x-transformers {release} cannot express this model: it relies on {leftover[0]!r}, a behaviour "
            "that release does not have"
        )
    out = Path(out)
    import io

    buffer = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in tensors.items()}, buffer)
    config_path = out.with_name(out.name + ".config.json")
    with atomic_files(out, config_path) as (fd, config_fd):  # both files, or neither
        write_all(fd, buffer.getbuffer())
        write_all(config_fd, (json.dumps(spec, indent=1, sort_keys=True) + "\n").encode())
    return {
        "source": str(src),
        "from": str(info["stamp"]),
        "to": str(target),
        "steps": [record.get("id") for record in info["applied"]],
        "output": str(out),
        "config": str(config_path),
    }


def _legacy_flags(spec: Any, path: str = "") -> list[str]:
    """Spec keys that only xtf understands (`xtf_*`), wherever they sit."""
    found = []
    if isinstance(spec, dict):
        for key, value in spec.items():
            name = key[4:] if key.startswith(("enc_", "dec_")) else key
            if name.startswith("xtf_"):
                found.append(f"{path}{key}")
            found += _legacy_flags(value, f"{path}{key}.")
    return found
