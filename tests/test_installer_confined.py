"""The installer's own copies and writes never follow a symlink out of the tree they work in.

Real files and symlinks in tmp dirs: `host/` plays the live system's files the links aim
at; the target and the medium are trees whose links must resolve inside themselves.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from conftest import one_line
from xenspin_installer import confined
from xenspin_installer.answerfile import Answerfile, Root
from xenspin_installer.bootloader import boot_files
from xenspin_installer.disks import Disk, GiB, plan
from xenspin_installer.install import LOG_ON_TARGET, Installer, Layout
from xenspin_installer.run import Runner

SECRET = b"host secret: must never reach the target\n"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """Files of 'the live system' that links in a tree aim at."""
    h = tmp_path / "host"
    (h / "dir").mkdir(parents=True)
    (h / "secret").write_bytes(SECRET)
    (h / "dir" / "vmlinuz-9").write_bytes(SECRET)
    (h / "dir" / "keep").write_bytes(SECRET)
    return h


def host_unchanged(host: Path) -> None:
    assert sorted(p.name for p in host.rglob("*")) == ["dir", "keep", "secret", "vmlinuz-9"]
    assert all(p.read_bytes() == SECRET for p in host.rglob("*") if p.is_file())


def nothing_of_the_host_in(tree: Path) -> None:
    for p in tree.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert SECRET not in p.read_bytes(), p


def installer(tmp_path: Path, target: Path, medium: Path) -> Installer:
    disk = Disk("/dev/vdz", 8 * GiB)
    runner = Runner(tmp_path / "install.log", out=io.StringIO())
    inst = Installer(
        Answerfile(root=Root(password_hash="$6$a$b")),
        Layout(disk, plan(disk.size, local_storage=False)),
        runner,
        medium / "live/filesystem.squashfs",
        medium=medium,
        workdir=tmp_path,
    )
    inst.mnt = target
    return inst


def test_names_resolve_as_in_a_chroot(tmp_path: Path, host: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "abs").symlink_to(host)  # absolute: starts again at the tree's root
    (tree / "climb").symlink_to("../../../../../../../../" + str(host).lstrip("/"))  # `..` stops at the root
    (tree / "lib").symlink_to("usr/lib")
    (tree / "etc/self").symlink_to("/")
    (tree / "loop").symlink_to("loop2")
    (tree / "loop2").symlink_to("/loop")
    assert confined.resolve(tree, "abs/secret") == tree / str(host / "secret").lstrip("/")
    assert confined.resolve(tree, "climb/secret") == tree / str(host / "secret").lstrip("/")
    assert confined.resolve(tree, "/lib/x") == tree / "usr/lib/x"
    assert confined.resolve(tree, "etc/self/etc/self/../../lib") == tree / "usr/lib"
    assert confined.resolve(tree, "lib", follow=False) == tree / "lib"
    assert confined.resolve(tree, "new/dir/../file") == tree / "new/file"
    assert not confined.is_file(tree, "abs/secret") and not confined.is_file(tree, "climb/secret")
    with pytest.raises(confined.Refused) as e:
        confined.resolve(tree, "loop/x")
    assert one_line(e).endswith("loop/x: too many levels of symbolic links")
    with pytest.raises(confined.Refused) as e:
        confined.read_bytes(tree, "abs/secret")
    assert "a symlink to" not in one_line(e) and "missing, not a regular file" in str(e.value)


def test_a_packaged_boot_link_to_a_host_file_is_refused_never_copied(tmp_path: Path, host: Path) -> None:
    """The squashfs left /boot out; beside it on the medium, vmlinuz-zzz -> a host file."""
    medium, target = tmp_path / "medium", tmp_path / "target"
    (medium / "boot").mkdir(parents=True)
    (medium / "live").mkdir()
    target.mkdir()
    (medium / "boot/vmlinuz-6.1").write_bytes(b"kernel\n")
    (medium / "boot/vmlinuz-zzz").symlink_to(host / "secret")
    inst = installer(tmp_path, target, medium)
    with pytest.raises(confined.Refused) as e:
        inst.copy_boot_files()
    line = one_line(e)
    assert line.startswith(f"{medium}/boot/vmlinuz-zzz: a symlink to {host}/secret, which inside {medium} is missing")
    assert line.endswith("(links are followed only inside their tree); refusing it")
    assert list(target.iterdir()) == []  # all are checked before any is copied
    host_unchanged(host)
    for link in (f"../../../../../../../../..{host}/secret", "/dev/zero"):  # climbing out; a device of the host
        (medium / "boot/vmlinuz-zzz").unlink()
        (medium / "boot/vmlinuz-zzz").symlink_to(link)
        with pytest.raises(confined.Refused):
            inst.copy_boot_files()
        assert list(target.iterdir()) == []
    (medium / "boot/vmlinuz-zzz").unlink()
    os.mkfifo(medium / "boot/vmlinuz-zzz")  # a fifo is refused at once, not waited on
    with pytest.raises(confined.Refused) as e:
        inst.copy_boot_files()
    assert one_line(e) == f"{medium}/boot/vmlinuz-zzz: a fifo, not a regular file; refusing it"


def test_boot_files_linked_inside_the_medium_are_copied(tmp_path: Path, host: Path) -> None:
    medium, target = tmp_path / "medium", tmp_path / "target"
    (medium / "live/boot").mkdir(parents=True)
    (medium / "pool").mkdir()
    target.mkdir()
    (medium / "pool/kernel").write_bytes(b"kernel\n")
    (medium / "pool/xen").write_bytes(b"xen\n")
    (medium / "live/boot/vmlinuz-6.1").symlink_to("../../pool/kernel")
    (medium / "live/boot/xen-4.17.gz").symlink_to("/pool/xen")  # the medium's /pool, not the host's
    (medium / "live/boot/config-6.1").write_bytes(b"config\n")
    (target / "boot").symlink_to(host / "dir")  # the target's /boot: an absolute link, resolved inside the target
    inst = installer(tmp_path, target, medium)
    inst.copy_boot_files()
    boot = target / str(host / "dir").lstrip("/")
    assert {p.name: p.read_bytes() for p in boot.iterdir()} == {
        "vmlinuz-6.1": b"kernel\n",
        "xen-4.17.gz": b"xen\n",
        "config-6.1": b"config\n",
    }
    assert not any(p.is_symlink() for p in boot.iterdir())
    host_unchanged(host)


def test_writes_into_the_target_stay_inside_it(tmp_path: Path, host: Path) -> None:
    """Links in the image at the names the installer writes: etc/, var/log, machine-id, the initramfs conf."""
    target, medium = tmp_path / "target", tmp_path / "medium"
    (target / "etc/initramfs-tools").mkdir(parents=True)
    (target / "var").mkdir()
    (target / "var/log").symlink_to(host / "dir")
    (target / "etc/hostname").symlink_to(host / "secret")
    (target / "etc/machine-id").symlink_to(host / "secret")
    (target / "etc/initramfs-tools/update-initramfs.conf").symlink_to(host / "dir/keep")
    (target / "etc/ssh").symlink_to(host / "dir")
    inst = installer(tmp_path, target, medium)
    inst.write("etc/hostname", "xen1\n")
    inst.first_boot_identity()
    with inst.initramfs_updates_held():
        pass
    inst.r.log("the log")
    inst.copy_log()
    host_unchanged(host)
    assert (target / "etc/hostname").read_text() == "xen1\n" and not (target / "etc/hostname").is_symlink()
    assert (target / "etc/machine-id").read_bytes() == b"" and not (target / "etc/machine-id").is_symlink()
    log = target / str(host / "dir").lstrip("/") / "xenspin-install.log"  # var/log as the target sees it
    assert "the log" in log.read_text() and oct(log.stat().st_mode & 0o777) == "0o600"
    assert (target / "etc/systemd/system/ssh.service.wants/xenspin-ssh-keygen.service").is_symlink()
    assert LOG_ON_TARGET == "var/log/xenspin-install.log"
    nothing_of_the_host_in(target)


def test_grub_modules_copy_refuses_a_link_out_and_copies_the_rest(tmp_path: Path, host: Path) -> None:
    target = tmp_path / "target"
    mods = target / "usr/lib/grub/x86_64-efi"
    mods.mkdir(parents=True)
    (mods / "normal.mod").write_bytes(b"normal\n")
    (mods / "sub").mkdir()
    (mods / "sub/x.lst").write_bytes(b"lst\n")
    (mods / "same.mod").symlink_to("normal.mod")
    (target / "boot/grub/x86_64-efi").mkdir(parents=True)
    (target / "boot/grub/x86_64-efi/old.mod").write_bytes(b"old\n")
    assert confined.copy_tree(target, "usr/lib/grub/x86_64-efi", target, "boot/grub/x86_64-efi") == 3
    confined.remove(target, "boot/grub/x86_64-efi")
    assert confined.copy_tree(target, "usr/lib/grub/x86_64-efi", target, "boot/grub/x86_64-efi") == 3
    copied = target / "boot/grub/x86_64-efi"
    assert sorted(str(p.relative_to(copied)) for p in copied.rglob("*")) == [
        "normal.mod",
        "same.mod",
        "sub",
        "sub/x.lst",
    ]
    assert (copied / "same.mod").read_bytes() == b"normal\n" and not (copied / "same.mod").is_symlink()
    (mods / "evil.mod").symlink_to(host / "secret")
    with pytest.raises(confined.Refused) as e:
        confined.copy_tree(target, "usr/lib/grub/x86_64-efi", target, "boot/grub/x86_64-efi")
    assert one_line(e).startswith(f"{mods}/evil.mod: a symlink to {host}/secret")
    nothing_of_the_host_in(target)
    # removing a tree that is a link removes the link, not what it names
    (target / "boot/grub/x86_64-efi").rename(target / "boot/grub/moved")
    (target / "boot/grub/x86_64-efi").symlink_to(host / "dir")
    confined.remove(target, "boot/grub/x86_64-efi")
    assert not os.path.lexists(target / "boot/grub/x86_64-efi")
    host_unchanged(host)


def test_a_copy_replaces_a_planted_link_never_writes_through_it(tmp_path: Path, host: Path) -> None:
    """The disk initrd into boot/initrd.img-V, where the image put a link to a host file."""
    medium, target = tmp_path / "medium", tmp_path / "target"
    (medium / "live").mkdir(parents=True)
    (target / "boot").mkdir(parents=True)
    (medium / "live/disk-initrd.img-6.1").write_bytes(b"initrd\n")
    (target / "boot/initrd.img-6.1").symlink_to(host / "secret")
    (target / "boot/initrd.img-6.1.xenspin-tmp").symlink_to(host / "dir/keep")  # even the temporary name
    inst = installer(tmp_path, target, medium)
    made = inst.disk_initrds()
    assert made == {"6.1": "live/disk-initrd.img-6.1"}
    confined.copy_file(inst.medium_tree, made["6.1"], target, "boot/initrd.img-6.1", mode=0o644)
    assert (target / "boot/initrd.img-6.1").read_bytes() == b"initrd\n"
    assert not (target / "boot/initrd.img-6.1").is_symlink()
    assert not os.path.lexists(target / "boot/initrd.img-6.1.xenspin-tmp")
    host_unchanged(host)


def test_grub_sees_only_the_kernels_of_the_target(tmp_path: Path, host: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "boot").symlink_to(host / "dir")  # the host's dir holds vmlinuz-9; the target's does not exist
    with pytest.raises(FileNotFoundError):
        boot_files(target)
    inside = target / str(host / "dir").lstrip("/")
    inside.mkdir(parents=True)
    (inside / "vmlinuz-6.1").write_bytes(b"k")
    (inside / "initrd.img-6.1").symlink_to(host / "secret")  # no initrd inside the target
    files = boot_files(target)
    assert (files.kernel, files.initrd) == ("/boot/vmlinuz-6.1", None)
