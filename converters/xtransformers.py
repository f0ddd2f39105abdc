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

from xtf_core.checkpoint.stamp import KEY_FINGERPRINT, Stamp, canonical_json, current_stamp, stamped_metadata
from xtf_core.errors import ConversionError, XtfError

from .layout import compare_layouts, layout_at
from .releases import FIRST_SUPPORTED, LAST_KNOWN, LINEAGE, check_release
from .reports import ConvertReport, DcpConvertReport, ExportReport, Placement
from .torch_pickle import read_state_dict

DETECTION_LIMIT_BYTES = 512 * 1024 * 1024


def read_config(config: str | os.PathLike[str]) -> dict[str, Any]:
    """The constructor call as a spec, from a JSON file, a Python file (`.py`, parsed, never run) or the call
    itself written inline (`TransformerWrapper(num_tokens=..., attn_layers=Decoder(...))`)."""
    from .pycall import looks_like_call, parse_call, read_python_file

    text = os.fspath(config)
    if looks_like_call(text):
        return parse_call(text)
    path = Path(text)
    if path.suffix == ".py":
        return read_python_file(path)
    try:
        parsed = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read the config ({exc})") from exc
    if not isinstance(parsed, dict) or not isinstance(parsed.get("class"), str):
        raise ConversionError(
            f'{path}: the config must be a JSON object with a "class", e.g. {{"class": "TransformerWrapper", ...}}'
        )
    return parsed


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


def _layouts(config: dict, stamp: Stamp | None) -> list[dict[str, tuple[int, ...]]]:
    """The layouts the config builds at `stamp`, or at every era of the lineage when the release is unknown."""
    nodes = [stamp] if stamp is not None else [node for node, _ in _node_ranges()]
    layouts = []
    for node in nodes:
        try:
            layouts.append(layout_at(node, config))
        except (XtfError, RuntimeError, ValueError, TypeError, KeyError, NotImplementedError):
            continue
    return layouts


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    release: str | None,
    config: dict[str, Any],
    key: str | None = None,
    prefix: str | None = None,
) -> ConvertReport | DcpConvertReport:
    """Write `src` (a torch pickle of an x-transformers state dict) as a stamped safetensors file.

    With a release named, the config is read as that release read it: keyword arguments it silently ignored
    are dropped (and recorded under `xtf.ignored`), and options it knew under an older name are renamed;
    without one, the release is found from the tensors' names and shapes (era detection).
    The model may sit under a prefix inside a bigger state dict (`prefix`, or found when exactly one fits).

    `src` may also be a `torch.distributed.checkpoint` folder: its model tensors (the group `key`, or the
    one whose names fit) are stamped as `release` when one is named, else as the installed xtf (a DCP
    folder has no era to detect: it was written by a model built with the installed core)."""
    from xtf_core.checkpoint.stamp import KEY_IGNORED
    from xtf_core.checkpoint.writer import dedupe_shared, write_tensors
    from xtf_core.fingerprint import compute_fingerprint

    from . import dcp, option_history
    from . import prefix as prefixes
    from .release_kwargs import as_release_built

    if dcp.is_dcp_checkpoint(src):
        if prefix is not None:
            raise ConversionError(
                f"{src}: a DCP folder's model is found by its group (--key), not by a name prefix; drop --prefix"
            )
        return dcp.convert(src, out, config=config, key=key, release=release)

    full_state, found_at = read_state_dict(src, key)
    where = str(src)
    ignored: list[dict[str, Any]] = []
    renamed: list[dict[str, Any]] = []
    stamp = None
    if release is not None:
        stamp = check_release(release)
        config, ignored, renamed = as_release_built(config, stamp.version, where)
        option_history.check(config, stamp.version, where)  # options a release ran differently
    layouts = _layouts(config, stamp)
    state, prefix, guessed = prefixes.select(full_state, layouts, prefix, where)
    try:
        if stamp is None:
            detection = detect_release(state, config, where)
            release, why = detection.release, detection.why
            stamp = check_release(release)
            option_history.check(config, stamp.version, where)
        else:
            why = "named with --from"
        _compare_layout(state, config, stamp, where)
    except ConversionError as exc:
        if not guessed:
            raise
        raise ConversionError(f"{exc}{prefixes.mismatch_hint(full_state, layouts, prefix)}") from exc
    try:
        _, _, model = _fit(state, config, stamp, where)
    except XtfError as exc:
        raise ConversionError(f"{exc} (as x-transformers {stamp.version} with the given config)") from exc
    tensors, tied = dedupe_shared({k: v.contiguous() for k, v in state.items()})
    metadata = stamped_metadata({}, stamp, config, tied=tied)
    if ignored:
        metadata[KEY_IGNORED] = canonical_json(ignored)
    # the function the release computed, recorded so `xtf verify` can check every later migration
    metadata[KEY_FINGERPRINT] = canonical_json(compute_fingerprint(model))
    write_tensors(Path(out), tensors, metadata)
    return ConvertReport(
        source=where,
        output=str(out),
        stamp=str(stamp),
        why=why,
        tensors=len(tensors),
        state_dict_at=found_at,
        prefix=prefix,
        ignored=ignored,
        renamed=renamed,
    )


def export(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    release: str,
    into: str | os.PathLike[str] | None = None,
    key: str | None = None,
    prefix: str | None = None,
) -> ExportReport:
    """Write a stamped checkpoint as the plain state dict x-transformers `release` loads (strict=True).

    With `into` (a torch pickle holding the model inside a bigger state dict, e.g. an application
    checkpoint), the output is a copy of that pickle in which only the tensors under the model's prefix are
    replaced; every other tensor and entry (optimizer state, epoch, ...) is kept as it was."""
    import torch

    from xtf_core.checkpoint.atomic import atomic_files
    from xtf_core.checkpoint.io import write_all
    from xtf_core.loading import load_state

    from . import dcp, option_history

    if dcp.is_dcp_checkpoint(src):
        raise ConversionError(
            f"{src}: a DCP folder is imported, not exported: stamp it first (xtf convert {src} --config CONFIG "
            "-o MODEL.safetensors), then export that file"
        )
    target = check_release(release)
    tensors, spec, info = load_state(src, target=target)
    option_history.check(spec, target.version, str(src))  # options that release ran differently
    tensors, spec = _shed_zero_biases(tensors, spec, target)
    leftover = sorted(_legacy_flags(spec))
    if leftover:
        raise ConversionError(
            f"{src}: x-transformers {release} cannot express this model: it relies on {leftover[0]!r}, a behaviour "
            "that release does not have"
        )
    out = Path(out)
    import io

    plain = {k: v.contiguous() for k, v in tensors.items()}
    placement = None
    if into is not None:
        plain, placement = _place_into(src, plain, into, key=key, prefix=prefix)
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    config_path = out.with_name(out.name + ".config.json")
    with atomic_files(out, config_path) as (fd, config_fd):  # both files, or neither
        write_all(fd, buffer.getbuffer())
        write_all(config_fd, (json.dumps(spec, indent=1, sort_keys=True) + "\n").encode())
    return ExportReport(
        source=str(src),
        output=str(out),
        config=str(config_path),
        from_stamp=str(info.stamp),
        to_stamp=str(target),
        steps=[record.get("id") for record in info.applied],
        placement=placement,
    )


# Legacy flags that only keep a bias tensor later releases removed; a zero bias is the same as none.
BIAS_FLAGS = (
    "xtf_norm_bias",
    "xtf_logits_bias",
    "xtf_project_bias",
    "xtf_gate_values_bias",
    "xtf_attn_out_bias",
)


def _without(spec: Any, flags: tuple[str, ...]) -> Any:
    if isinstance(spec, dict):
        return {
            k: _without(v, flags)
            for k, v in spec.items()
            if (k[4:] if k.startswith(("enc_", "dec_")) else k) not in flags
        }
    return spec


def _shed_inert_flags(spec: dict) -> dict:
    """Drop legacy flags that change nothing for this model: `xtf_unnormed_mems` (how Transformer-XL memories
    are normed) on a wrapper that keeps no memories, as the 1.27.5 step's own downgrade decides."""
    layers = spec.get("attn_layers")
    if isinstance(layers, dict) and layers.get("xtf_unnormed_mems") and not spec.get("max_mem_len"):
        spec = {**spec, "attn_layers": {k: v for k, v in layers.items() if k != "xtf_unnormed_mems"}}
    return spec


def _shed_zero_biases(tensors: dict[str, Any], spec: dict, target: Stamp) -> tuple[dict[str, Any], dict]:
    """For a release that has no place for them, drop the kept legacy biases when every one is zero (the
    same function without them); otherwise leave the spec as is, so the export is refused naming the flag."""
    spec = _shed_inert_flags(spec)
    lean = _without(spec, BIAS_FLAGS)
    if lean == spec:
        return tensors, spec
    try:
        expected = layout_at(target, lean)
    except (XtfError, RuntimeError, ValueError, TypeError, KeyError, NotImplementedError):
        return tensors, spec
    if any(name not in tensors or tuple(tensors[name].shape) != shape for name, shape in expected.items()):
        return tensors, spec
    if any(bool(tensor.any()) for name, tensor in tensors.items() if name not in expected):
        return tensors, spec
    return {name: tensors[name] for name in expected}, lean


def _layouts_of_stamped(src: str | os.PathLike[str]) -> list[dict[str, tuple[int, ...]]]:
    """The layouts a stamped file's model has at every x-transformers era the chain can take it down to."""
    import torch

    from xtf_core.chain import default_chain, migrate_in_memory
    from xtf_core.chain.plan import checkpoint_stamp, plan_steps
    from xtf_core.checkpoint.header import read_checkpoint_headers
    from xtf_core.spec import build

    stamp, spec = checkpoint_stamp(read_checkpoint_headers(src))
    current = current_stamp()
    planned = plan_steps(default_chain().route(stamp, current), spec)
    spec_now = planned[-1].spec_after if planned else spec
    with torch.device("meta"):
        meta = build(spec_now).state_dict()
    layouts = [{name: tuple(t.shape) for name, t in meta.items()}]
    for node, _ in _node_ranges():
        try:
            back, _, _ = migrate_in_memory(meta, spec_now, current, node)
        except (XtfError, RuntimeError, ValueError, TypeError, KeyError, NotImplementedError):
            continue
        layouts.append({name: tuple(t.shape) for name, t in back.items()})
    return layouts


def _place_into(
    src: str | os.PathLike[str],
    tensors: dict[str, Any],
    into: str | os.PathLike[str],
    *,
    key: str | None,
    prefix: str | None,
) -> tuple[Any, Placement]:
    """(a copy of the pickle `into` with the model's tensors replaced by `tensors`, what the report says)."""
    from . import prefix as prefixes
    from .torch_pickle import load_pickle, locate_state_dict

    root = load_pickle(into)
    state, found = locate_state_dict(root, key, into)
    if prefix is not None:
        prefix = prefixes.normalise(prefix)
        if not prefixes.under(state, prefix):
            raise ConversionError(f"{into}: no tensor under the prefix {prefix!r} to replace")
    else:
        layouts = _layouts_of_stamped(src)
        fits = prefixes.fitting_prefixes(state, layouts)
        if len(fits) != 1:
            best = prefixes.best_partial_prefix(state, layouts)
            seen = f"; most of its names are under {best[0]!r}" if best and best[1] else ""
            raise ConversionError(
                f"{into}: "
                + (
                    f"the model fits under several prefixes ({', '.join(repr(p) for p in fits)})"
                    if fits
                    else f"no part of it has the names and shapes of this model at any x-transformers era{seen}"
                )
                + "; name the model's prefix with --prefix"
            )
        prefix = fits[0]
    replaced = sum(1 for name in state if name.startswith(prefix))
    new_state = prefixes.replace_under(state, prefix, tensors)
    if found is None:
        out = new_state
    else:
        out = type(root)(root) if isinstance(root, dict) else dict(root)
        out[found] = new_state
    return out, Placement(
        into=str(into),
        state_dict_at="top level" if found is None else f"key {found!r}",
        prefix=prefix,
        replaced=replaced,
        kept=len(state) - replaced,
    )


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
