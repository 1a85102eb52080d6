"""Trust II (issue 16): templates, overlay files, packaging and step-made .debs, tried as an attacker would.

Each test makes the attack, asserts it had no effect (no marker file, the host file
unchanged, the secret nowhere in the result) and that the refusal is one line. All
fast: overlays are read from plain directories, packaging and the .deb checks run
directly on files made in tmp_path.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_RECIPE, one_line, write

from builder import build, cli, manifest, outputcheck, overlays, yamlfile
from builder.build import BuildError
from builder.errors import ManifestError
from builder.overlays import OverlayError

SECRET = "hunter2-not-for-the-image"

CONTEXT_DATA = {
    "distro": {"name": "acme-xen", "version": "1.2", "vendor": "ACME", "description": ""},
    "components": {"xen": {"version": "4.17.5", "kind": "debian", "key": "abc"}},
    "build": {"id": "0123456789ab", "epoch": 0, "date": "1970-01-01", "lock_digest": "ff"},
}


def context() -> dict[str, Any]:
    """What templates see, a new copy each time: a template that could change it would change no other test."""
    return copy.deepcopy(CONTEXT_DATA)


DISTRO = """\
name: tiny
version: "{version}"
components:
  hello: {{}}
installer:
  component: hello
"""

RECIPE = TINY_RECIPE


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    write(root, {"components/hello.yaml": RECIPE, "components/hello/note": "hello\n"})
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A 0600 host file outside everything, standing in for /etc/shadow."""
    path = tmp_path / "host" / "shadow"
    write(tmp_path, {"host/shadow": f"root:{SECRET}:20228:0:99999:7:::\n"})
    path.chmod(0o600)
    return path


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI expecting exit 2 and exactly one line on stderr; return it."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    return one_line(err)


def overlay(tmp_path: Path, files: dict[str, str | tuple[str, int]], name: str = "vendor") -> Path:
    root = tmp_path / "overlays" / name
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text, mode = content if isinstance(content, tuple) else (content, 0o644)
        path.write_text(text)
        path.chmod(mode)
    return root


def finishes(fn: Callable[[], Any], timeout: float = 10) -> BaseException | None:
    """Call fn in a thread; fail if it is still running after timeout (blocked on a fifo, reading a device)."""
    result: dict[str, BaseException | None] = {"error": None}

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s (blocked reading a fifo or device?)"
    return result["error"]


def refusal(fn: Callable[[], Any], prefix: str = "") -> str:
    """The one-line OverlayError fn raises, within seconds."""
    error = finishes(fn)
    assert isinstance(error, OverlayError), repr(error)
    return one_line(str(error), prefix)


# --- 1. version: renders in Jinja2's sandbox, with `date` only ------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",  # the issue's: Jinja2's globals
        "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
        "{{ date.__class__.__mro__[1].__subclasses__() }}{{ lipsum.__globals__.os.system('touch MARKER') }}",
    ],
)
def test_version_template_runs_no_code(project: Path, tmp_path: Path, capsys, payload: str) -> None:
    marker = tmp_path / "marker"
    write(project, {"distro.yaml": DISTRO.format(version="1.0" + payload.replace("MARKER", str(marker)))})
    line = refused(capsys, "validate")  # the version's grammar takes {{ date }} and nothing else
    assert line.startswith("distro.yaml:2: version: "), line
    assert not marker.exists()
    # Behind the grammar, the renderer is a sandbox too (defence in depth): no code runs either way.
    (tmp_path / "v.yaml").write_text("version: x\n")
    raw = yamlfile.load(tmp_path / "v.yaml")
    with pytest.raises(ManifestError) as e:
        manifest._render_version("1.0" + payload.replace("MARKER", str(marker)), raw)
    assert "(expected {{ date }} only)" in one_line(e)
    assert not marker.exists()


def test_version_template_errors_are_one_line_and_date_still_renders(
    project: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project, {"distro.yaml": DISTRO.format(version="1.0~{{ date")})
    line = refused(capsys, "validate")
    assert line.startswith("distro.yaml:2: version: '1.0~{{ date' (expected ")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    write(project, {"distro.yaml": DISTRO.format(version="1.0~{{ date }}")})
    assert manifest.load(project / "distro.yaml").version == "1.0~20260101"


# --- 2. overlay templates: the sandbox, and loads only inside their own overlay ---------------


@pytest.mark.parametrize(
    "payload",
    [
        "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
        "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
        "{{ distro.__class__.__mro__[1].__subclasses__() }}",
        "{{ distro.update(name='x') }}{{ ''.__class__ }}",  # the context is immutable, too
    ],
)
def test_overlay_template_runs_no_code(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "marker"
    src = overlay(tmp_path, {"etc/motd.j2": "hello\n" + payload.replace("MARKER", str(marker)) + "\n"})
    ctx = context()
    line = refusal(lambda: overlays.read([src], ctx), f"{src / 'etc/motd.j2'}:2: ")
    assert "refused by the template sandbox" in line
    assert not marker.exists()
    assert ctx == CONTEXT_DATA


@pytest.mark.parametrize(
    "make, include, refused_at",
    [
        # an overlay symlink to an absolute path is fine in the image, but a template must not read it here
        (lambda src, secret: os.symlink(secret, src / "etc/leak"), "{% include 'etc/leak' %}", "etc/leak"),
        (
            lambda src, secret: os.symlink(secret.parent, src / "etc/hostdir"),
            "{% include 'etc/hostdir/shadow' %}",
            "etc/hostdir",
        ),
        (lambda src, secret: os.symlink(secret, src / "etc/leak"), "{% import 'etc/leak' as m %}", "etc/leak"),
        (lambda src, secret: os.symlink(secret, src / "etc/leak"), "{% extends 'etc/leak' %}", "etc/leak"),
        # even a symlink that stays in the overlay: no symlink on the way, whatever it names
        (lambda src, secret: os.symlink("motd.inc", src / "etc/alias"), "{% include 'etc/alias' %}", "etc/alias"),
        (lambda src, secret: None, "{% include '" + "../" * 8 + "host/shadow' %}", None),
        (lambda src, secret: None, "{% include 'SECRET' %}", None),  # the absolute path of the host file
        (lambda src, secret: None, "{% include 'etc/./motd.inc' %}", None),
    ],
)
def test_template_loads_only_regular_files_of_its_own_overlay(
    tmp_path: Path, secret: Path, make: Callable[[Path, Path], None], include: str, refused_at: str | None
) -> None:
    src = overlay(tmp_path, {"etc/motd.inc": "inside\n"})
    make(src, secret)
    (src / "etc/issue.j2").write_text("first line\n" + include.replace("SECRET", str(secret)) + "\n")
    before = secret.read_bytes()
    line = refusal(lambda: overlays.read([src], context()), f"{src / 'etc/issue.j2'}:2: ")
    if refused_at:
        assert f": {src / refused_at}: is a symlink (templates load only regular files of their own overlay" in line
    else:
        assert "not a path inside the overlay (expected a name relative to" in line
    assert SECRET not in line
    assert secret.read_bytes() == before


def test_template_may_include_import_and_extend_files_of_its_overlay(tmp_path: Path) -> None:
    src = overlay(
        tmp_path,
        {
            "etc/xenspin/base.tmpl": "[{% block body %}{% endblock %}]\n",
            "etc/xenspin/macros.tmpl": "{% macro shout(s) %}{{ s | upper }}{% endmacro %}",
            "etc/xenspin/part.inc": "{{ distro.vendor }}",
            "etc/issue.j2": "{% extends 'etc/xenspin/base.tmpl' %}{% block body %}"
            "{% import 'etc/xenspin/macros.tmpl' as m %}{{ m.shout(distro.name) }} "
            "{% include 'etc/xenspin/part.inc' %}{% include 'etc/none' ignore missing %}{% endblock %}",
        },
    )
    entries = {str(e.path): e for e in overlays.read([src], context())}
    assert entries["etc/issue"].data == b"[ACME-XEN ACME]\n"


def test_fifo_included_by_a_template_is_refused_without_blocking(tmp_path: Path) -> None:
    """The template names a fifo of its overlay: refused by lstat before anything opens it."""
    src = overlay(tmp_path, {"etc/issue.j2": "{% include 'etc/pipe' %}\n"})
    os.mkfifo(src / "etc/pipe")
    line = refusal(lambda: overlays.template_file(src, "etc/pipe"))
    assert line.startswith(f"{src / 'etc/pipe'}: is a fifo (templates load only regular files")


# --- 3. no fifo, device or socket in an overlay or among the hooks is ever opened ------------


def test_fifo_in_an_overlay_does_not_hang_plan_or_read(tmp_path: Path) -> None:
    src = overlay(tmp_path, {"etc/motd": "hi\n"})
    os.mkfifo(src / "etc/pipe")
    try:
        for fn in (lambda: overlays.digest([src], []), lambda: overlays.read([src], context())):
            line = refusal(fn)
            assert (
                line == f"{src / 'etc/pipe'}: is a fifo (expected a regular file, directory or symlink in an overlay)"
            )
    finally:  # a reader left waiting in open() (no fix) gets end of file
        with contextlib.suppress(OSError):  # nobody waits: nothing opened it
            os.close(os.open(src / "etc/pipe", os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.root  # mknod
def test_device_node_in_an_overlay_is_never_read(tmp_path: Path) -> None:
    src = overlay(tmp_path, {"etc/motd": "hi\n"})
    os.mknod(src / "etc/zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: a read never ends
    for fn in (lambda: overlays.digest([src], []), lambda: overlays.read([src], context())):
        line = refusal(fn)
        assert (
            line
            == f"{src / 'etc/zero'}: is a device node (expected a regular file, directory or symlink in an overlay)"
        )


def test_hook_that_is_no_regular_file_is_refused_unread(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    os.mkfifo(hooks / "pipe.sh")
    os.symlink(hooks / "pipe.sh", hooks / "link.sh")  # a symlink is read at its target, which must be a file
    ok = hooks / "ok.sh"
    ok.write_text("#!/bin/sh\n")
    for hook in ("pipe.sh", "link.sh"):
        line = refusal(lambda hook=hook: overlays.digest([], [ok, hooks / hook]))
        assert line == f"{hooks / 'pipe.sh'}: is a fifo (expected a regular file in rootfs.hooks)"
    (hooks / "good.sh").symlink_to("ok.sh")
    assert overlays.digest([], [hooks / "good.sh"]) != overlays.digest([], [])


def test_overlay_file_is_opened_without_following_a_symlink(tmp_path: Path, secret: Path) -> None:
    """lstat said regular; by the time it is opened it is a symlink (a race): O_NOFOLLOW refuses it."""
    src = overlay(tmp_path, {"etc/motd": "hi\n"})
    real_lstat = os.lstat

    def lstat_then_swap(path: Any, *a: Any, **kw: Any) -> os.stat_result:
        st = real_lstat(path, *a, **kw)
        if str(path) == str(src / "etc/motd") and stat.S_ISREG(st.st_mode):
            os.unlink(path)
            os.symlink(secret, path)
        return st

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(overlays.os, "lstat", lstat_then_swap)
        with pytest.raises(OverlayError) as e, overlays.open_regular(src / "etc/motd") as f:
            f.read()
    assert one_line(e, f"{src / 'etc/motd'}: ") and SECRET not in str(e.value)


# --- 4. setuid and setgid files in overlays: only those rootfs.setuid names -----------------


def test_setuid_overlay_file_is_refused_unless_rootfs_setuid_names_it(tmp_path: Path) -> None:
    src = overlay(tmp_path, {"usr/local/bin/tool": ("#!/bin/sh\n", 0o4755), "etc/motd": "hi\n"})
    line = refusal(lambda: overlays.read([src], context()))
    assert line == (
        f"{src / 'usr/local/bin/tool'}: setuid or setgid (mode 4755; rootfs.setuid does not name /usr/local/bin/tool)"
    )
    entries = {str(e.path): e for e in overlays.read([src], context(), setuid=["/usr/local/bin/tool"])}
    assert entries["usr/local/bin/tool"].mode == 0o4755
    # a template is named by what it renders to; setgid counts too, and so do directories
    tmpl = overlay(tmp_path, {"usr/bin/t.j2": ("#!/bin/sh\n", 0o2755)}, "tmpl")
    assert "rootfs.setuid does not name /usr/bin/t)" in refusal(lambda: overlays.read([tmpl], context()))
    assert overlays.read([tmpl], context(), setuid=["/usr/bin/t"])
    (tmpl / "usr/bin/t.j2").chmod(0o755)
    (tmpl / "var").mkdir(mode=0o755)
    (tmpl / "var").chmod(0o2775)
    assert "rootfs.setuid does not name /var)" in refusal(lambda: overlays.read([tmpl], context()))


def test_rootfs_setuid_names_absolute_image_paths(project: Path, capsys) -> None:
    base = DISTRO.format(version="1.0")
    write(project, {"distro.yaml": base + "rootfs:\n  setuid: [/usr/bin/ok, usr/bin/tool]\n"})
    line = refused(capsys, "validate")
    assert line == (
        "distro.yaml:8: rootfs.setuid[1]: 'usr/bin/tool' (expected an absolute path in the image,"
        " such as /usr/bin/tool, without '..')"
    )
    for bad in ("/usr/../etc/shadow", "//usr/bin/x", "/usr/bin/x/", "/", '"/usr/bin/a\\nb"'):
        write(project, {"distro.yaml": base + f"rootfs:\n  setuid: [{bad}]\n"})
        assert refused(capsys, "validate").startswith("distro.yaml:8: rootfs.setuid[0]: "), bad
    write(project, {"distro.yaml": base + "rootfs:\n  setuid: [/usr/bin/ok]\n"})
    assert manifest.load(project / "distro.yaml").rootfs.setuid == ["/usr/bin/ok"]


# --- 5. packaging: $OUT/DEBIAN holds regular files only, control is never written through ---


@pytest.fixture
def packaging(project: Path, tmp_path: Path) -> dict[str, Any]:
    """What build._package needs for the tiny component, with its staged tree ($OUT) in tmp_path."""
    write(project, {"distro.yaml": DISTRO.format(version="1.0")})
    distro = manifest.load(project / "distro.yaml")
    staged = tmp_path / "obj/staged"
    write(staged, {"usr/share/hello/note": "hello\n"})
    return {
        "distro": distro,
        "job": build.Job("hello", "build", None, (), "", "hello"),
        "comp": distro.components["hello"],
        "entry": {"kind": "path", "path": "components/hello"},
        "staged": staged,
        "tmp": tmp_path / "obj",
        "key": "0" * 64,
        "epoch": 1767225600,
        "logs": tmp_path / "logs",
    }


def package(args: dict[str, Any]) -> str:
    return build._package(**args)


def package_refused(args: dict[str, Any]) -> str:
    with pytest.raises(BuildError) as e:
        package(args)
    assert not list(args["tmp"].glob("*.deb"))
    return one_line(e, "build hello: package: $OUT/DEBIAN")


def test_package_is_made_and_its_time_clamp_stays_in_the_tree(packaging: dict[str, Any], tmp_path: Path) -> None:
    host = tmp_path / "hostdir"
    write(host, {"file": "x\n"})
    os.utime(host / "file", (1, 1))
    (packaging["staged"] / "usr/share/hello/link").symlink_to(host)  # absolute: a path of the installed system
    write(packaging["staged"], {"DEBIAN/postinst": "#!/bin/sh\n"})  # allowed: it runs only in a user namespace
    (packaging["staged"] / "DEBIAN/postinst").chmod(0o755)
    deb = packaging["tmp"] / package(packaging)
    fields = subprocess.run(["dpkg-deb", "-f", deb], capture_output=True, text=True, check=True).stdout
    assert "Package: hello-xs" in fields
    assert os.stat(host / "file").st_mtime == 1 and os.stat(host).st_mtime != packaging["epoch"]


def test_debian_control_symlink_does_not_write_to_the_host(packaging: dict[str, Any], secret: Path) -> None:
    before = secret.read_bytes()
    (packaging["staged"] / "DEBIAN").mkdir()
    (packaging["staged"] / "DEBIAN/control").symlink_to(secret)
    line = package_refused(packaging)
    assert line == (
        "build hello: package: $OUT/DEBIAN/control is a symlink (expected only regular files in $OUT/DEBIAN)"
    )
    assert secret.read_bytes() == before


def test_debian_directory_symlink_does_not_write_to_the_host(packaging: dict[str, Any], secret: Path) -> None:
    (packaging["staged"] / "DEBIAN").symlink_to(secret.parent)
    line = package_refused(packaging)
    assert line == "build hello: package: $OUT/DEBIAN is a symlink (expected a directory of regular files)"
    assert sorted(p.name for p in secret.parent.iterdir()) == ["shadow"]


def test_debian_script_symlink_does_not_read_a_host_file_into_the_package(
    packaging: dict[str, Any], secret: Path
) -> None:
    (packaging["staged"] / "DEBIAN").mkdir()
    (packaging["staged"] / "DEBIAN/postinst").symlink_to(secret)
    line = package_refused(packaging)
    assert line == (
        "build hello: package: $OUT/DEBIAN/postinst is a symlink (expected only regular files in $OUT/DEBIAN)"
    )
    (packaging["staged"] / "DEBIAN/postinst").unlink()
    os.mkfifo(packaging["staged"] / "DEBIAN/config")
    assert "$OUT/DEBIAN/config is a fifo (" in package_refused(packaging)


@pytest.mark.parametrize("link", ["usr/share/doc", "usr/share/doc/hello-xs", "usr"])
def test_doc_directory_symlink_does_not_write_to_the_host(
    packaging: dict[str, Any], secret: Path, tmp_path: Path, link: str
) -> None:
    """xenspin writes the copyright file and changelog into usr/share/doc/PKG: a step's link there is refused."""
    staged = packaging["staged"]
    (staged / link).parent.mkdir(parents=True, exist_ok=True)
    if (staged / link).is_dir():
        shutil.rmtree(staged / link)
    (staged / link).symlink_to(secret.parent)
    with pytest.raises(BuildError) as e:
        package(packaging)
    assert one_line(e, f"build hello: package: $OUT/{link} is a symlink") == (
        f"build hello: package: $OUT/{link} is a symlink"
        " (expected a directory: xenspin writes the package's copyright file and changelog there)"
    )
    assert sorted(p.name for p in secret.parent.iterdir()) == ["shadow"]


def test_a_source_licence_file_link_reads_nothing_of_the_host(packaging: dict[str, Any], secret: Path) -> None:
    """The source's COPYING is copied into the copyright file: a link there (to /etc/shadow) is skipped."""
    src = packaging["tmp"].parent / "src"
    write(src, {"LICENSE": "Copyright 2024 Upstream\nPermission is granted.\n"})
    (src / "COPYING").symlink_to(secret)
    os.mkfifo(src / "NOTICE")  # never opened for a blocking read
    deb = packaging["tmp"] / build._package(**packaging, src=src)
    text = subprocess.run(
        f"dpkg-deb --fsys-tarfile {deb} | tar -xO ./usr/share/doc/hello-xs/copyright",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Copyright: Copyright 2024 Upstream" in text and " Permission is granted." in text
    assert SECRET not in text and "COPYING" not in text


def test_debian_control_hard_link_is_replaced_not_written_through(packaging: dict[str, Any], tmp_path: Path) -> None:
    host = tmp_path / "host-file"
    host.write_text("host data\n")
    (packaging["staged"] / "DEBIAN").mkdir()
    os.link(host, packaging["staged"] / "DEBIAN/control")
    deb = packaging["tmp"] / package(packaging)
    assert host.read_text() == "host data\n"
    assert "Package: hello-xs" in subprocess.run(["dpkg-deb", "-f", deb], capture_output=True, text=True).stdout


# --- 6. .debs a step makes: no device node, no unnamed setuid file, DEBIAN regular files only --


def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return gzip.compress(buf.getvalue(), mtime=0)


def member(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 8, 0
    return info, b"#!/bin/sh\n" if kind == tarfile.REGTYPE else b""


def handmade_deb(
    dest: Path, data: list[tuple[tarfile.TarInfo, bytes]], control: list[tuple[tarfile.TarInfo, bytes]] = ()
) -> Path:
    """A .deb made without dpkg-deb, so it can hold what dpkg-deb --build would not make (devices, links)."""
    fields = b"Package: good-xs\nVersion: 1.0\nArchitecture: amd64\nMaintainer: T <t@example.invalid>\nDescription: t\n"
    ctrl = [member("./", tarfile.DIRTYPE, 0o755), (member("./control")[0], fields), *control]
    body = ar_member("debian-binary", b"2.0\n") + ar_member("control.tar.gz", tar_gz(ctrl))
    body += ar_member("data.tar.gz", tar_gz([member("./", tarfile.DIRTYPE, 0o755), *data]))
    dest.write_bytes(b"!<arch>\n" + body)
    return dest


def dpkg_built_deb(dest: Path, files: dict[str, int]) -> Path:
    """A .deb dpkg-deb --build makes from a staged tree whose files have the given modes."""
    root = dest.parent.parent / "staging" / f"{dest.stem}-{len(list(dest.parent.parent.glob('staging/*')))}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: good-xs\nVersion: 1.0\nArchitecture: amd64\nMaintainer: T <t@example.invalid>\nDescription: t\n"
    )
    for rel, mode in files.items():
        write(root, {rel: "#!/bin/sh\n"})
        (root / rel).chmod(mode)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", root, dest], check=True, capture_output=True)
    return dest


@pytest.fixture
def step_dirs(tmp_path: Path) -> tuple[Path, Path]:
    out, debs = tmp_path / "out", tmp_path / "debs"
    out.mkdir()
    debs.mkdir()
    return out, debs


def check(out: Path, debs: Path, **kw: Any) -> str:
    with pytest.raises(outputcheck.OutputRefused) as e:
        outputcheck.check("evil", "stage", out, debs, packages=["good-xs"], architecture="amd64", **kw)
    return one_line(e, "build evil: step stage: $DEBS/")


def test_step_made_deb_with_unnamed_setuid_file_is_refused(step_dirs: tuple[Path, Path]) -> None:
    out, debs = step_dirs
    dpkg_built_deb(debs / "good.deb", {"usr/bin/tool": 0o4755, "usr/bin/plain": 0o755})
    assert check(out, debs) == (
        "build evil: step stage: $DEBS/good.deb: /usr/bin/tool is setuid or setgid (the recipe's setuid: does not name it)"
    )
    outputcheck.check("evil", "stage", out, debs, packages=["good-xs"], architecture="amd64", setuid=["usr/bin/tool"])
    (debs / "good.deb").unlink()
    dpkg_built_deb(debs / "good.deb", {"usr/lib/x/helper": 0o2755})
    assert "$DEBS/good.deb: /usr/lib/x/helper is setuid or setgid" in check(out, debs, setuid=["usr/bin/tool"])


def test_step_made_deb_hard_link_to_a_setuid_file_is_named_too(step_dirs: tuple[Path, Path]) -> None:
    out, debs = step_dirs
    handmade_deb(
        debs / "good.deb",
        [
            member("./usr/", tarfile.DIRTYPE, 0o755),
            member("./usr/bin/", tarfile.DIRTYPE, 0o755),
            member("./usr/bin/tool", mode=0o4755),
            member("./usr/bin/other", tarfile.LNKTYPE, 0o644, link="./usr/bin/tool"),
        ],
    )
    assert check(out, debs, setuid=["usr/bin/tool"]) == (
        "build evil: step stage: $DEBS/good.deb: /usr/bin/other is setuid or setgid (the recipe's setuid: does not name it)"
    )
    outputcheck.check(
        "evil", "stage", out, debs, packages=["good-xs"], architecture="amd64", setuid=["usr/bin/tool", "usr/bin/other"]
    )


@pytest.mark.parametrize(
    "kind, what",
    [(tarfile.CHRTYPE, "a device node"), (tarfile.BLKTYPE, "a device node"), (tarfile.FIFOTYPE, "a fifo")],
)
def test_step_made_deb_with_a_device_node_is_refused(step_dirs: tuple[Path, Path], kind: bytes, what: str) -> None:
    out, debs = step_dirs
    handmade_deb(debs / "good.deb", [member("./dev/", tarfile.DIRTYPE, 0o755), member("./dev/sda", kind, 0o666)])
    assert check(out, debs, setuid=["dev/sda"]) == (
        f"build evil: step stage: $DEBS/good.deb: /dev/sda is {what} (not allowed in a package a step makes)"
    )


def test_step_made_deb_control_part_holds_regular_files_only(step_dirs: tuple[Path, Path], secret: Path) -> None:
    out, debs = step_dirs
    handmade_deb(debs / "good.deb", [], [member("./postinst", tarfile.SYMTYPE, 0o777, link=str(secret))])
    assert check(out, debs) == (
        f"build evil: step stage: $DEBS/good.deb: DEBIAN/postinst is a symlink to {secret}"
        " (expected only regular files in a package's control part)"
    )
    (debs / "good.deb").unlink()
    handmade_deb(debs / "good.deb", [], [member("./postinst", mode=0o755)])  # a regular script is allowed
    outputcheck.check("evil", "stage", out, debs, packages=["good-xs"], architecture="amd64")
