"""Toolstack I: the xcp spin's shape (fast, no build) and its build from the carried upstreams (marker xcp).

The OCaml libraries xen-api needs are build-only components: each finds what it builds after at
$DEPS, none is installed on a host. The toolstack itself is one package on the rootfs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import SHARED_MIRROR
from test_xen import SpinBuild, build_spin

from builder import build, installtest, lock, manifest, packagesets

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


# --- the build (marker xcp: `.venv/bin/pytest -m xcp`) ------------------------------------------

TOOLSTACK = (
    "opt/xensource/bin/xapi",
    "opt/xensource/bin/xe",
    "usr/sbin/xenopsd-xc",
    "usr/sbin/squeezed",
    "usr/sbin/xcp-rrdd",
    "usr/sbin/xcp-networkd",
    "usr/sbin/message-switch",
    "usr/sbin/forkexecd",
    "usr/lib/systemd/system/xapi.service",
)


@pytest.fixture(scope="module")
def xcp_spin(store: Path, xen_mirror: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> SpinBuild:
    """spins/xcp.yaml built once, with GitHub and xenbits mapped to the carried upstreams."""
    github = SHARED_MIRROR / "github.com"
    if not github.is_dir():
        pytest.skip(f"no carried upstreams at {github}")
    work = tmp_path_factory.mktemp("xcp")
    return build_spin("xcp.yaml", store, work, {**xen_mirror, "https://github.com/": github.as_uri() + "/"})


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.xcp
def test_the_xcp_spin_builds_the_toolstack_from_the_carried_upstreams(xcp_spin: SpinBuild, tmp_path: Path) -> None:
    """dune, the libraries, Xen's bindings, xen-api and sm build offline in their sandboxes; the toolstack
    is one package on the ISO, with sm and the host side."""
    spin = xcp_spin
    built = set(spin.report["built"]) | set(spin.report["cached"])
    assert {"ocaml-dune", "ocaml-uri", "ocaml-rpc", "xen-ocaml", "xen-api", "xen", "xen-tools", "sm"} <= built
    repo = {p.name.split("_")[0] for p in (spin.out / "repo").glob("*.deb")}
    assert {"xenspin-xapi", "xenspin-sm", "xenspin-xcp-host"} <= repo
    assert not any(n.startswith("xenspin-ocaml") for n in repo)
    (deb,) = spin.report["debs"]["xen-api"]
    tree = tmp_path / "xapi"
    subprocess.run(["dpkg-deb", "-x", deb, tree], check=True)
    for path in TOOLSTACK:
        assert (tree / path).is_file(), path
    assert not list(tree.rglob("*.cmxs")) and not (tree / "usr/lib/ocaml").exists()
    # message-switch without the on-disk redo log and its mirage libraries (our patch)
    assert b"Shared_block" not in (tree / "usr/sbin/message-switch").read_bytes()
    # on the rootfs, with the Xen tools of the same source
    installed = {p["name"] for p in json.loads((spin.out / "packages.json").read_text())}
    assert {"xenspin-xapi", "xenspin-sm", "xenspin-xcp-host", "xenspin-xen-tools", "xenspin-hypervisor"} <= installed
    assert not any(n.startswith("xenspin-ocaml") for n in installed)


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.xcp
def test_an_installed_xcp_host_answers_xe_and_the_xenapi(xcp_spin: SpinBuild, tmp_path: Path) -> None:
    """`xenspin test install` of the xcp ISO: the installed host's toolstack is active, `xe` lists the
    host, the control domain, the local SR and the management network, and root logs in over HTTPS."""
    (iso,) = xcp_spin.out.glob("*.iso")
    (verdict,) = installtest.run_install_test(iso, ["bios"], tmp_path)
    assert verdict.passed, verdict.line()
    assert {"xapi", "xe", "XenAPI"} <= set(verdict.steps), verdict.line()


# --- what `xenspin test install` checks on a host carrying the toolstack -------------------------


class ScriptedLine:
    """A logged-in serial console whose commands answer from a table (the longest fragment in the command)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.typed = answers, []

    def command(self, cmd: str, timeout: float) -> str:
        self.typed.append(cmd)
        parts = [part for part in self.answers if part in cmd]
        return self.answers[max(parts, key=len)] if parts else ""


HEALTHY = {
    "test -x /opt/xensource/bin/xe": "carried",
    "systemctl is-active": " ".join(["active"] * len(installtest.XCP_DAEMONS)),
    "xe host-list": "xenspin-test",
    "xe vm-list": "Control domain on host: xenspin-test",
    "xe sr-list": "Local storage,4286578688",
    "xe network-list": "xenbr0",
    "xe vdi-create": "16777216",
    "XenAPI": "XenAPI True",
}


def test_the_install_test_checks_xapi_xe_and_a_xenapi_login() -> None:
    line = ScriptedLine(HEALTHY)
    steps: dict[str, float] = {}
    installtest.check_toolstack(line, 0.0, steps, "pw")  # type: ignore[arg-type]
    assert {"xapi", "xe", "XenAPI"} <= set(steps)
    assert any('login_with_password("root", "pw"' in c for c in line.typed)


@pytest.mark.parametrize(
    ("broken", "answer", "missing"),
    [
        ("systemctl is-active", "active active active active active failed active active", "xapi active"),
        ("xe sr-list", "", "xe sr-list"),
        ("xe vdi-create", "Error code: SR_BACKEND_FAILURE_1200", "xe vdi-create"),
        ("xe vm-list", "The server failed to handle your request: error", "xe vm-list"),
        ("XenAPI", "Traceback ... SESSION_AUTHENTICATION_FAILED", "XenAPI login"),
    ],
)
def test_the_install_test_fails_naming_what_the_host_did_not_answer(broken: str, answer: str, missing: str) -> None:
    line = ScriptedLine({**HEALTHY, broken: answer})
    with pytest.raises(installtest.Timeout) as e:
        installtest.check_toolstack(line, 0.0, {}, "pw")  # type: ignore[arg-type]
    assert e.value.text == missing


def test_a_host_without_the_toolstack_is_not_asked_and_a_login_unknown_is_skipped() -> None:
    line = ScriptedLine({"test -x /opt/xensource/bin/xe": "absent"})
    installtest.check_toolstack(line, 0.0, {}, "pw")  # type: ignore[arg-type]
    assert len(line.typed) == 1
    line = ScriptedLine(HEALTHY)
    steps: dict[str, float] = {}
    installtest.check_toolstack(line, 0.0, steps, None)  # type: ignore[arg-type]
    assert "XenAPI" not in steps and not any("XenAPI" in c for c in line.typed)


def test_the_domain_managers_start_after_dom0_is_set_up() -> None:
    """xen-init-dom0 skips dom0's xenstore nodes (the cpupool's name among them) once another daemon has
    written dom0's: xenopsd-xc and squeezed must come after it, or `xl create` fails on that host."""
    units = ROOT / "components" / "xcp-host" / "systemd"
    for unit in ("xenopsd-xc.service", "squeezed.service"):
        after = [ln for ln in (units / unit).read_text().splitlines() if ln.startswith("After=")]
        assert any("xen-init-dom0.service" in ln.split("=", 1)[1].split() for ln in after), unit
