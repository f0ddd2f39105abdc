"""Read a config as the x-transformers release named with `--from` read it.

Before 1.29.0, `AttentionLayers` (and so `Encoder`, `Decoder`, `CrossAttender`) took `**kwargs`, split off
the `attn_`/`ff_`(/`cross_attn_`) groups for `Attention`/`FeedForward`, and silently dropped the rest: a
stray `dim_head`, `use_abs_pos_emb` given to a `Decoder`, `flash_attn`, a typo. The model trained was built
without them, so the conversion drops them too, says so, and records them under `xtf.ignored`. What the
release refused (a name its wrapper did not take, a prefixed name its `Attention`/`FeedForward` did not take)
is refused here as well: no checkpoint was made with it. Options the release knew under an older name are
read under that name.

The rules per release come from `release_kwargs.json`, derived from each release's code by
`scripts/release_kwargs.py`. No torch here.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from packaging.version import Version

from xtf_core.errors import ConversionError

LAYER_CLASSES = ("Encoder", "Decoder", "CrossAttender", "AttentionLayers")
TABLE = Path(__file__).with_name("release_kwargs.json")

# (class names, old name, today's names): options releases knew under another name. A rename applies to a
# release whose code took the old name (the table says which); tests check that no release took both.
# `use_pos_emb` became `use_abs_pos_emb` in 0.25.8; `attn_talking_heads` became `attn_pre_talking_heads` +
# `attn_post_talking_heads` in 1.39.0 (xtf implements neither; False is accepted, True refused by name).
# Later, a bare `dim_head` on a stack is a stray kwarg the release dropped: no rename there.
RENAMES: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = (
    (("TransformerWrapper", "ContinuousTransformerWrapper"), "use_pos_emb", ("use_abs_pos_emb",)),
    (LAYER_CLASSES, "attn_talking_heads", ("attn_pre_talking_heads", "attn_post_talking_heads")),
    # Encoder until 0.0.21 and Decoder until 0.0.25 took the head size as their own `dim_head`
    (("Encoder", "Decoder"), "dim_head", ("attn_dim_head",)),
)


@functools.lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    return json.loads(TABLE.read_text())


@functools.lru_cache(maxsize=4096)
def _version(text: str) -> Version:
    return Version(text)


def _holds(intervals: list[list[str]], version: Version) -> bool:
    return any(_version(first) <= version <= _version(last) for first, last in intervals)


@functools.lru_cache(maxsize=256)
def _rules_for(release: str) -> dict[str, dict[str, Any]] | None:
    data = table()
    version = Version(release)
    if not _version(data["releases"][0]) <= version <= _version(data["releases"][-1]):
        return None
    rules: dict[str, dict[str, Any]] = {}
    for name, facts in data["classes"].items():
        if not _holds(facts["exists"], version):
            continue
        routes: dict[str, Any] = {}
        for prefix, route in facts["routes"].items():
            if _holds(route["exists"], version):
                if _holds(route.get("unused", []), version):
                    routes[prefix] = "unused"
                elif _holds(route["any"], version):
                    routes[prefix] = "*"
                else:
                    routes[prefix] = sorted(
                        n for n, spans in route["names"].items() if _holds(spans, version)
                    )
        var_kw = _holds(facts["var_kw"], version)
        rules[name] = {
            "params": sorted(n for n, spans in facts["params"].items() if _holds(spans, version)),
            "var_kw": var_kw,
            "routes": routes,
            "leftover": "raise" if not var_kw or _holds(facts["leftover_raises"], version) else "drop",
            "fixed": sorted(n for n, spans in facts["fixed"].items() if _holds(spans, version)),
        }
    return rules


def rules_for(release: str) -> dict[str, dict[str, Any]] | None:
    """{class name: rule} for `release` (see scripts/release_kwargs.py for the fields), or None when the
    table does not cover it."""
    rules = _rules_for(str(Version(release)))
    return None if rules is None else json.loads(json.dumps(rules))  # callers get their own copy


def _renamed(cls: str, key: str) -> tuple[str, ...] | None:
    for classes, old, new in RENAMES:
        if cls in classes and key == old:
            return new
    return None


class _Reader:
    def __init__(self, release: str, rules: dict[str, dict[str, Any]], where: str) -> None:
        self.release = release
        self.rules = rules
        self.where = where
        self.ignored: list[dict[str, Any]] = []
        self.renamed: list[dict[str, Any]] = []

    def refuse(self, at: str, cls: str, key: str, why: str) -> ConversionError:
        name = f"{at}.{key}" if at else key
        return ConversionError(
            f"{self.where}: x-transformers {self.release} refused the option {name!r} of {cls} ({why}), so no "
            "checkpoint was made with it; remove it from --config, or name the release you trained with"
        )

    def node(self, spec: dict[str, Any], at: str) -> dict[str, Any]:
        cls = spec.get("class")
        rule = self.rules.get(cls) if isinstance(cls, str) else None
        if rule is None and cls in LAYER_CLASSES:
            rule = self.rules.get("AttentionLayers")
        if rule is None:
            if cls in LAYER_CLASSES or cls in ("TransformerWrapper", "ContinuousTransformerWrapper"):
                raise ConversionError(
                    f"{self.where}: x-transformers {self.release} has no {cls} class; check --from and --config"
                )
            return dict(spec)  # XTransformer: read as given (the xtf core checks every option)
        out: dict[str, Any] = {"class": cls}
        for key, value in spec.items():
            if key == "class":
                continue
            if key == "attn_layers" and isinstance(value, dict) and "class" in value:
                if key not in rule["params"]:
                    raise self.refuse(at, cls, key, f"its {cls} takes no {key!r}")
                out[key] = self.node(value, f"{at}.{key}" if at else key)
                continue
            for name in self.option(spec, cls, rule, key, value, at):
                out[name] = value
        return out

    def option(
        self, spec: dict[str, Any], cls: str, rule: dict[str, Any], key: str, value: Any, at: str
    ) -> tuple[str, ...]:
        """The names to keep `key` under (today's), or () when the release ignored it (recorded)."""
        if key in rule["fixed"]:
            raise self.refuse(at, cls, key, f"its {cls} sets {key!r} itself")
        new = _renamed(cls, key)
        if new is not None and self.accepts(rule, key):
            self.renamed.append({"at": at, "option": key, "as": list(new)})
            return new
        if key in rule["params"]:
            return (key,)
        for prefix, accepted in sorted(rule["routes"].items(), key=lambda item: -len(item[0])):
            if not key.startswith(prefix):
                continue
            target = "FeedForward" if prefix == "ff_" else "Attention"
            if accepted == "unused":
                return self.ignore(
                    at, key, value, f"its {cls} split off {prefix} options and passed them nowhere"
                )
            if prefix == "cross_attn_" and not (spec.get("cross_attend") or cls == "CrossAttender"):
                return self.ignore(at, key, value, "no cross-attention layer was built to take it")
            if accepted == "*" or key[len(prefix) :] in accepted:
                return (key,)
            raise self.refuse(at, cls, key, f"its {target} takes no {key[len(prefix) :]!r}: TypeError")
        if rule["var_kw"] and rule["leftover"] == "drop":
            return self.ignore(at, key, value, f"its {cls} dropped keyword arguments it did not know")
        why = "an unknown keyword argument: " + ("AssertionError" if rule["var_kw"] else "TypeError")
        raise self.refuse(at, cls, key, why)

    def ignore(self, at: str, key: str, value: Any, why: str) -> tuple[str, ...]:
        self.ignored.append({"at": at, "option": key, "value": value, "why": why})
        return ()

    @staticmethod
    def accepts(rule: dict[str, Any], key: str) -> bool:
        """Whether the release took `key` (as a parameter, or through a prefix its target class takes)."""
        if key in rule["params"]:
            return True
        for prefix, accepted in rule["routes"].items():
            if (
                key.startswith(prefix)
                and accepted != "unused"
                and (accepted == "*" or key[len(prefix) :] in accepted)
            ):
                return True
        return False


def as_release_built(
    config: dict[str, Any], release: str, where: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(the config as `release` built it, the options it ignored, the options renamed to today's names).

    Each ignored entry is `{"at": where in the config ('' = top, 'attn_layers'), "option", "value", "why"}`;
    each renamed one `{"at", "option", "as"}`. A release the table does not cover is read as given."""
    rules = rules_for(release)
    if rules is None:
        return dict(config), [], []
    reader = _Reader(release, rules, where)
    built = reader.node(config, "")
    return built, reader.ignored, reader.renamed
