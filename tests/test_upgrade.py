"""Upgrade and restore, the pure parts: which root is in use, what an upgrade carries from the old root
(decided on real trees in tmp_path), how accounts merge, the boot menu's previous release, and what the
interactive installer offers for a disk that holds an installation. The runs on a loop device are in
test_installer_disk.py (refusals) and test_installer_vm.py (an upgrade and a restore of the default rootfs).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from xenspin_installer import carry
from xenspin_installer.answerfile import Answerfile
from xenspin_installer.bootloader import BootFiles, grub_cfg, previous_entry
from xenspin_installer.disks import (
    Disk,
    DiskError,
    GiB,
    MiB,
    choose_installed,
    has_layout,
    installed,
    swap_names_args,
)
from xenspin_installer.install import decide
from xenspin_installer.probe import parse_partx
from xenspin_installer.ui import Console, interview


def part(path: str, n: int, name: str, fstype: str = "ext4") -> Disk:
    return Disk(path, GiB, type="part", fstype=fstype, partlabel=name, partn=n)


def host_disk(active: int = 3, backup_fs: str = "ext4") -> Disk:
    names = {active: "xenspin-root", 7 - active: "xenspin-backup"}
    return Disk(
        "/dev/vda",
        8 * GiB,
        pttype="gpt",
        children=(
            part("/dev/vda1", 1, "biosboot", ""),
            part("/dev/vda2", 2, "esp", "vfat"),
            part("/dev/vda3", 3, names[3], "ext4" if names[3] == "xenspin-root" else backup_fs),
            part("/dev/vda4", 4, names[4], "ext4" if names[4] == "xenspin-root" else backup_fs),
            part("/dev/vda5", 5, "local", "LVM2_member"),
        ),
    )


def test_the_root_in_use_is_the_partition_named_for_it() -> None:
    for active, other in ((3, 4), (4, 3)):
        found = installed(host_disk(active))
        assert (found.root.partn, found.backup.partn, found.esp.path) == (active, other, "/dev/vda2")
        layout = decide(Answerfile(mode="upgrade"), host_disk(active))
        # an upgrade writes the other root and makes it the one in use; the old one becomes the backup
        assert (layout.dev("root"), layout.dev("old"), layout.swap) == (
            f"/dev/vda{other}",
            f"/dev/vda{active}",
            (other, active),
        )
        assert layout.parts == []  # nothing repartitioned
    assert swap_names_args("/dev/vda", 4, 3) == [
        "sgdisk",
        "--change-name=4:xenspin-root",
        "--change-name=3:xenspin-backup",
        "/dev/vda",
    ]


def test_what_upgrade_and_restore_refuse() -> None:
    with pytest.raises(DiskError, match=r"^disk /dev/vda: its second root /dev/vda4 is empty: no release kept"):
        decide(Answerfile(mode="restore"), host_disk(backup_fs=""))
    in_use = Disk("/dev/vda", 8 * GiB, children=(Disk("/dev/vda3", GiB, type="part", mountpoints=("/",)),))
    with pytest.raises(DiskError, match=r"^disk /dev/vda: is in use \(mounted at /\)"):
        decide(Answerfile(mode="upgrade"), in_use)
    legacy = Disk(
        "/dev/sda", 8 * GiB, pttype="gpt", children=(part("/dev/sda2", 2, "esp"), part("/dev/sda3", 3, "root"))
    )
    with pytest.raises(DiskError, match=r"holds an install made before upgrades existed"):
        installed(legacy)
    blank = Disk("/dev/sdb", 8 * GiB)
    assert not has_layout(blank) and has_layout(host_disk())
    with pytest.raises(DiskError, match=r"^disk /dev/sdb: holds no xenspin installation \(it holds nothing\)$"):
        installed(blank)
    assert choose_installed([blank, host_disk()], "").path == "/dev/vda"
    with pytest.raises(DiskError, match="^no disk holds a xenspin installation"):
        choose_installed([blank], "")


def test_partition_names_read_with_partx() -> None:
    text = 'NR="1" NAME="biosboot"\nNR="3" NAME="xenspin-root"\nNR="4" NAME="xenspin backup?"\n'
    assert parse_partx("/dev/nvme0n1", text) == {
        "/dev/nvme0n1p1": "biosboot",
        "/dev/nvme0n1p3": "xenspin-root",
        "/dev/nvme0n1p4": "xenspin backup?",
    }


def release_tree(root: Path) -> None:
    for rel, text in {
        "etc/os-release": "ID=xenspin\n",
        "etc/issue": "xenspin 0.1\n",
        "etc/ssh/sshd_config": "as shipped\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    os.symlink("/usr/share/zoneinfo/Etc/UTC", root / "etc/localtime")


def test_an_upgrade_carries_what_the_host_changed_and_nothing_the_release_shipped(tmp_path: Path) -> None:
    old = tmp_path / "old"
    release_tree(old)
    record = carry.parse_record(carry.record(old))
    assert record["etc/localtime"] == "link:/usr/share/zoneinfo/Etc/UTC"
    # the host's life after the install
    (old / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n")
    (old / "etc/ssh/ssh_host_ed25519_key").write_text("key\n")
    (old / "etc/localtime").unlink()
    os.symlink("/usr/share/zoneinfo/Europe/Paris", old / "etc/localtime")
    (old / "etc/fstab").write_text("UUID=old / ext4\n")
    (old / "root/.ssh").mkdir(parents=True)
    (old / "root/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA me\n")
    os.symlink("/etc/shadow", old / "root/.ssh/trap")  # copied as a link, never followed
    (old / "var/lib/xcp").mkdir(parents=True)
    (old / "var/lib/xcp/state.db").write_text("<db/>")
    names = carry.carried(old, record)
    assert "etc/issue" not in names and "etc/os-release" not in names  # as shipped: the new release's own
    assert "etc/fstab" not in names and "etc/passwd" not in names  # written anew, merged
    assert {"etc/ssh/sshd_config", "etc/ssh/ssh_host_ed25519_key", "etc/localtime"} <= set(names)
    assert {"root", "root/.ssh", "root/.ssh/authorized_keys", "root/.ssh/trap", "var/lib/xcp/state.db"} <= set(names)
    assert names.index("root/.ssh") < names.index("root/.ssh/authorized_keys")

    new = tmp_path / "new"
    release_tree(new)
    (new / "etc/issue").write_text("xenspin 0.2\n")
    (new / "root").mkdir()
    os.symlink("/tmp", new / "etc/ssh/ssh_host_ed25519_key")  # a link in the new tree is replaced, not written through
    assert carry.copy(old, new, names) == len(names)
    assert (new / "etc/issue").read_text() == "xenspin 0.2\n"
    assert (new / "etc/ssh/sshd_config").read_text() == "PermitRootLogin no\n"
    assert (new / "etc/ssh/ssh_host_ed25519_key").read_text() == "key\n"
    assert os.readlink(new / "etc/localtime") == "/usr/share/zoneinfo/Europe/Paris"
    assert os.readlink(new / "root/.ssh/trap") == "/etc/shadow"
    assert (new / "var/lib/xcp/state.db").read_text() == "<db/>"
    assert not list(new.glob("**/.*.xenspin-upgrade"))  # no temporary left behind


def test_accounts_merge_the_release_system_users_with_the_hosts_own() -> None:
    new = "root:x:0:0:root:/root:/bin/bash\n_chrony:x:101:102::/var/lib/chrony:/usr/sbin/nologin\n"
    old = (
        "root:x:0:0:root:/root:/bin/zsh\nold-daemon:x:102:103::/:/usr/sbin/nologin\n"
        "alice:x:1000:1000:Alice:/home/alice:/bin/bash\nxenspin-test:x:0:0::/root:/bin/bash\n"
    )
    text, from_old = carry.merge_table(new, old)
    assert text.splitlines() == [
        "root:x:0:0:root:/root:/bin/zsh",
        "_chrony:x:101:102::/var/lib/chrony:/usr/sbin/nologin",
        "old-daemon:x:102:103::/:/usr/sbin/nologin",
        "alice:x:1000:1000:Alice:/home/alice:/bin/bash",
        "xenspin-test:x:0:0::/root:/bin/bash",
    ]
    shadow = carry.merge_shadow(
        "root:!:1::::::\n_chrony:!:1::::::\n", "root:$y$hash:1::::::\nalice:$6$a:1::::::\n", from_old
    )
    assert shadow.splitlines() == ["root:$y$hash:1::::::", "_chrony:!:1::::::", "alice:$6$a:1::::::"]
    groups, _ = carry.merge_table("sudo:x:27:\nusers:x:100:\n", "sudo:x:27:alice\nusers:x:100:\n", members=True)
    assert groups.splitlines() == ["sudo:x:27:alice", "users:x:100:"]


def test_the_boot_menu_offers_the_previous_release() -> None:
    entry = previous_entry("Previous release: xenspin 0.1", "1111-old")
    cfg = grub_cfg({}, "2222-new", BootFiles("/boot/vmlinuz-6.12", "/boot/initrd.img-6.12", "/boot/xen-4.20.gz"), entry)
    assert cfg.index("with Xen hypervisor'") < cfg.index(
        "menuentry 'Previous release: xenspin 0.1' --id xenspin-previous"
    )
    assert "search --no-floppy --fs-uuid --set=root 1111-old\n\tconfigfile /boot/grub/grub.cfg" in cfg
    assert "root=UUID=2222-new" in cfg and "root=UUID=1111-old" not in cfg


def test_interactive_offers_only_installable_disks_and_defaults_to_the_only_one() -> None:
    medium = Disk("/dev/sr0", 400 * MiB, type="rom", holds_live_medium=True)
    loop = Disk("/dev/loop0", 300 * MiB, type="loop", fstype="squashfs")
    answers = Disk("/dev/sda", 32 * MiB, labels=("XSANSWER",), fstype="vfat")
    target = Disk("/dev/vda", 8 * GiB)
    typed = "\nhost\n\npassword\n\n\nyes\n"  # Enter takes the only disk, DHCP, UTC, us
    out = io.StringIO()
    answer = interview(Console(io.StringIO(typed), out, secret=lambda prompt: "pw"), [loop, medium, answers, target])
    shown = out.getvalue()
    assert "Install to disk (vda) [vda]: " in shown
    assert "/dev/sr0" not in shown and "/dev/loop0" not in shown and "/dev/sda" not in shown
    assert answer is not None and (answer.mode, answer.disk, answer.hostname) == ("install", "/dev/vda", "host")


def test_interactive_offers_upgrade_and_restore_for_a_disk_holding_an_installation() -> None:
    for typed, mode in (("\n\nyes\n", "upgrade"), ("\nrestore\nyes\n", "restore")):
        out = io.StringIO()
        answer = interview(Console(io.StringIO(typed), out), [host_disk()])
        assert "/dev/vda holds a xenspin installation: upgrade it" in out.getvalue()
        assert answer is not None and (answer.mode, answer.disk) == (mode, "/dev/vda")
    assert interview(Console(io.StringIO("\nupgrade\nno\n"), io.StringIO()), [host_disk()]) is None
    fresh = interview(
        Console(io.StringIO("\ninstall\nh\n\npassword\n\n\nyes\n"), io.StringIO(), secret=lambda p: "pw"), [host_disk()]
    )
    assert fresh is not None and (fresh.mode, fresh.wipe) == ("install", True)
