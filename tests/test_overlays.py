"""Overlays on a plain directory standing in for the rootfs (fast: no mmdebstrap).

The rootfs stage lays the overlays as one tar (rootfs.layer_tar) that the tree's own tar
unpacks inside the sandbox; here the host's GNU tar unpacks it with the same options.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from builder import overlays, rootfs
from builder.overlays import OverlayError
from builder.run import run

CONTEXT = {
    "distro": {"name": "acme-xen", "version": "1.2", "vendor": "ACME", "description": ""},
    "components": {"xen": {"version": "4.17.5", "kind": "debian", "key": "abc"}},
    "build": {"id": "0123456789ab", "epoch": 0, "date": "1970-01-01", "lock_digest": "ff"},
}


def tree(tmp_path: Path) -> Path:
    """A tree shaped like a merged-/usr Debian root: /lib -> usr/lib, /etc/os-release -> ../usr/lib/os-release."""
    root = tmp_path / "tree"
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    os.symlink("usr/lib", root / "lib")
    (root / "usr/lib/os-release").write_text("NAME=debian\n")
    os.symlink("../usr/lib/os-release", root / "etc/os-release")
    return root


def overlay(tmp_path: Path, name: str, files: dict[str, str | tuple[str, int]]) -> Path:
    root = tmp_path / "overlays" / name
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text, mode = content if isinstance(content, tuple) else (content, 0o644)
        path.write_text(text)
        path.chmod(mode)
    return root


def lay(entries: list[overlays.Entry], root: Path) -> None:
    """What builder/intree.sh does with the layer (there with the tree's tar, the tree as /)."""
    run(
        ["tar", "-x", "-C", root, "--numeric-owner", "--keep-directory-symlink"],
        what="lay",
        input=rootfs.layer_tar(entries, 0),
        capture=True,
    )


def test_overlays_are_laid_in_order_rendered_root_owned_modes_kept(tmp_path: Path) -> None:
    first = overlay(
        tmp_path,
        "base",
        {
            "etc/motd.j2": "{{ distro.name }} {{ distro.version }} xen {{ components.xen.version }}\n",
            "usr/local/sbin/hello": ("#!/bin/sh\necho hi\n", 0o750),
            "lib/xenspin/marker": "base\n",
        },
    )
    second = overlay(tmp_path, "vendor", {"lib/xenspin/marker": "vendor\n"})
    os.chown(first / "usr/local/sbin/hello", 1234, 1234)
    root = tree(tmp_path)
    lay(overlays.read([first, second], CONTEXT), root)

    assert (root / "etc/motd").read_text() == "acme-xen 1.2 xen 4.17.5\n"
    assert not (root / "etc/motd.j2").exists()
    hello = (root / "usr/local/sbin/hello").stat()
    assert stat.S_IMODE(hello.st_mode) == 0o750 and (hello.st_uid, hello.st_gid) == (0, 0)
    # the later overlay wins, and /lib is followed as the image would (into usr/lib)
    assert (root / "usr/lib/xenspin/marker").read_text() == "vendor\n"
    assert (root / "lib").is_symlink()


def test_a_file_replaces_a_tree_symlink_at_its_path(tmp_path: Path) -> None:
    """What the overlay holds is what the image has at that path (as rsync lays a tree); the link's target stays."""
    root = tree(tmp_path)
    src = overlay(tmp_path, "brand", {"etc/os-release": "NAME=acme\n"})
    lay(overlays.read([src], CONTEXT), root)
    assert not (root / "etc/os-release").is_symlink()
    assert (root / "etc/os-release").read_text() == "NAME=acme\n"
    assert (root / "usr/lib/os-release").read_text() == "NAME=debian\n"


def test_symlink_escaping_the_rootfs_is_refused_with_one_line(tmp_path: Path) -> None:
    src = overlay(tmp_path, "bad", {"etc/ok": "x\n"})
    os.symlink("../../../../etc/shadow", src / "etc/shadow-link")
    with pytest.raises(OverlayError) as e:
        overlays.read([src], CONTEXT)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{src / 'etc/shadow-link'}: ") and "escapes the rootfs" in msg


def test_links_inside_the_rootfs_are_kept(tmp_path: Path) -> None:
    src = overlay(tmp_path, "ok", {"etc/a": "x\n"})
    os.symlink("/usr/lib/os-release", src / "etc/abs")  # absolute: resolved inside the image
    os.symlink("../usr/lib/os-release", src / "etc/rel")
    root = tree(tmp_path)
    lay(overlays.read([src], CONTEXT), root)
    assert os.readlink(root / "etc/abs") == "/usr/lib/os-release"
    assert os.readlink(root / "etc/rel") == "../usr/lib/os-release"


def test_undefined_variable_is_refused_with_one_line_naming_file_and_line(tmp_path: Path) -> None:
    src = overlay(tmp_path, "typo", {"etc/issue.j2": "{{ distro.name }}\n{{ distro.vendorr }}\n"})
    with pytest.raises(OverlayError) as e:
        overlays.read([src], CONTEXT)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{src / 'etc/issue.j2'}:2: undefined variable")
    assert "vendorr" in msg


def test_digest_follows_content_and_modes(tmp_path: Path) -> None:
    src = overlay(tmp_path, "o", {"etc/a": "one\n"})
    before = overlays.digest([src], [])
    assert overlays.digest([src], []) == before
    (src / "etc/a").chmod(0o600)
    changed_mode = overlays.digest([src], [])
    (src / "etc/a").write_text("two\n")
    assert len({before, changed_mode, overlays.digest([src], [])}) == 3
