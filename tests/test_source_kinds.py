"""The source kinds share one base: each module defines what it must and what differs, the base the rest."""

from __future__ import annotations

import types

import pytest

from builder import sources


@pytest.mark.parametrize("kind", sorted(sources.KINDS))
def test_every_kind_answers_the_whole_protocol(kind: str) -> None:
    k = sources.module(kind)
    mod = __import__(f"builder.sources.{sources.KINDS[kind]}", fromlist=["_"])
    for name in sources.Kind.REQUIRED:
        assert getattr(k, name) is getattr(mod, name), f"{kind}: {name} is not the module's own"
    for name in sources._DEFAULTED:
        own = getattr(mod, name, None)
        assert getattr(k, name) is own if own is not None else getattr(k, name) is not None


def test_a_kind_takes_the_defaults_it_does_not_define() -> None:
    k = sources.module("component")
    assert k.in_tree(object()) is None and k.debs({}) is None and k.srcpkg({}) == {}
    assert k.binary_packages(object()) == [] and k.upstream_version({}) == "0"
    assert k.keeps({}, None) == sources.Keeps() and not k.FOLLOWS_ARCHIVE  # type: ignore[arg-type]
    assert sources.module("archive").FOLLOWS_ARCHIVE  # the Debian kinds say otherwise


def test_a_kind_module_lacking_a_required_member_is_refused() -> None:
    mod = types.ModuleType("builder.sources.half")
    mod.lock = mod.fetch = mod.fetched = lambda *a: None  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="half lacks tree, summary"):
        sources.Kind(mod)
