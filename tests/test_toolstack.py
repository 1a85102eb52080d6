"""Toolstack I: the xcp spin's shape (fast, no build) and its build from the carried upstreams (marker xcp).

The OCaml libraries xen-api needs are build-only components: each finds what it builds after at
$DEPS, none is installed on a host. The toolstack itself is one package on the rootfs.
"""

from __future__ import annotations

from pathlib import Path

from builder import build, lock, manifest, packagesets

ROOT = Path(__file__).resolve().parent.parent
XCP = ROOT / "spins" / "xcp.yaml"


def fake_lock(distro: manifest.Distro) -> lock.Lock:
    """A lock with a git entry per component (enough for planning; nothing is fetched)."""
    entries = {
        n: {"kind": "git", "url": "https://example.invalid/x.git", "ref": "v1", "commit": "0" * 40}
        for n in distro.components
    }
    return lock.Lock(archive={}, components=entries)


def test_the_toolstack_is_opt_in() -> None:
    """The default distribution builds no toolstack; the xcp spin does."""
    default = manifest.load(ROOT / "distro.yaml")
    assert not any(n.startswith("ocaml-") or n == "xen-api" for n in default.components)
    xcp = manifest.load(XCP)
    assert "xen-api" in xcp.components and "xapi" not in xcp.components


def test_ocaml_libraries_are_build_only_and_the_toolstack_ships() -> None:
    xcp = manifest.load(XCP)
    sets = packagesets.package_sets(xcp, fake_lock(xcp))
    shipped = dict(sets["rootfs"].built)
    assert "xenspin-xapi" in shipped
    assert not any(name.startswith("xenspin-ocaml") or name == "xenspin-xen-ocaml" for name in shipped)
    build_only = {n for n, c in xcp.components.items() if c.build_only}
    assert {"ocaml-dune", "ocaml-uri", "ocaml-rpc", "xen-ocaml"} <= build_only
    assert "xen-api" not in build_only


def test_xen_api_finds_every_library_and_xen_s_bindings_at_deps() -> None:
    """Every OCaml component is built before xen-api, directly or through another; Xen's bindings come
    from the same source as the hypervisor."""
    xcp = manifest.load(XCP)
    jobs = build.plan(xcp, fake_lock(xcp))
    ocaml = {n for n in xcp.components if n.startswith("ocaml-")}
    assert ocaml and ocaml | {"xen-ocaml"} <= set(jobs["xen-api"].deps)
    assert jobs["xen-ocaml"].source == "xen" and jobs["xen-tools"].source == "xen"
    # a library after another finds it too, and only what it builds after
    assert set(jobs["ocaml-cohttp-lwt"].deps) == {"ocaml-dune", "ocaml-uri", "ocaml-cohttp", "ocaml-conduit"}
