"""The QEMU harness on images that boot in seconds: ISOLINUX printing the markers itself, and a
blank disk that never boots. Real QEMU (TCG), real SeaBIOS; the Xen boots are in test_iso_boot.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder import cli, vmtest

MARKERS = (vmtest.XEN_BANNER, vmtest.DOM0_BANNER, "fake prompt:")


def test_markers_must_come_in_order() -> None:
    text = "noise Linux version 6 ... (XEN) Xen version 4.17 ... fake prompt:"
    assert vmtest.find_markers(text, MARKERS) == [vmtest.XEN_BANNER]
    text = "(XEN) Xen version 4.17\n[ 0.0] Linux version 6.1\nvm login: fake prompt:"
    assert vmtest.find_markers(text, MARKERS) == list(MARKERS)


def test_qemu_command_line(tmp_path: Path) -> None:
    ovmf = vmtest.Ovmf(Path("/fw/CODE.fd"), Path("/fw/VARS.fd"))
    cd = vmtest.qemu_argv(Path("/x.iso"), vmtest.Machine("bios"), tmp_path / "s.log", None, None)
    assert cd[cd.index("-cpu") + 1] == "qemu64" and cd[cd.index("-m") + 1] == "3072"
    assert cd[cd.index("-accel") + 1] == "tcg,thread=single" and f"file:{tmp_path / 's.log'}" in cd
    assert "if=none,id=cd,media=cdrom,format=raw,readonly=on,file=/x.iso" in cd
    assert not any("pflash" in a for a in cd)
    usb = vmtest.qemu_argv(Path("/x.iso"), vmtest.Machine("uefi", usb=True), tmp_path / "s.log", ovmf, tmp_path / "v")
    assert "usb-storage,bus=xhci.0,drive=stick,bootindex=1" in usb
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd" in usb
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'v'}" in usb


def test_ovmf_is_found_split_first_then_combined(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "OVMF.fd").write_bytes(b"x")
    assert vmtest.find_ovmf([a, b]) == vmtest.Ovmf(a / "OVMF.fd", None)
    (b / "OVMF_CODE_4M.fd").write_bytes(b"x")
    (b / "OVMF_VARS_4M.fd").write_bytes(b"x")
    assert vmtest.find_ovmf([a, b]) == vmtest.Ovmf(b / "OVMF_CODE_4M.fd", b / "OVMF_VARS_4M.fd")
    with pytest.raises(vmtest.VmError, match="no OVMF firmware in"):
        vmtest.find_ovmf([tmp_path / "none"])


# A boot sector that writes its message to COM1 and halts: xor ax,ax; mov ds,ax; cld;
# mov si,msg; mov dx,0x3f8; next: lodsb; test al,al; jz done; out dx,al; jmp next; done: hlt; jmp done
BOOT_CODE = bytes.fromhex("31c08ed8fc be167c baf803 ac 84c0 7403 ee ebf8 f4 ebfd".replace(" ", ""))


def talking_disk(tmp_path: Path) -> Path:
    """A BIOS disk whose boot sector prints the three markers on the serial line, then halts."""
    msg = b"(XEN) Xen version fake\r\nLinux version fake\r\nfake prompt:\r\n\0"
    sector = (BOOT_CODE + msg).ljust(510, b"\0") + b"\x55\xaa"
    dest = tmp_path / "talk.img"
    dest.write_bytes(sector.ljust(1 << 20, b"\0"))
    return dest


def test_cli_passes_when_every_marker_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = talking_disk(tmp_path)
    status = cli.main(
        ["test", "boot", str(image), "--firmware", "bios", "--usb", "--expect", "fake prompt:", "--timeout", "120"]
        + ["--out", str(tmp_path / "out")]
    )
    lines = capsys.readouterr().out.splitlines()
    assert status == 0, lines
    assert len(lines) == 1 and lines[0].startswith("PASS bios-usb: 'fake prompt:' after ")
    assert "fake prompt:" in (tmp_path / "out/test-boot/bios-usb.serial.log").read_text()


def test_cli_fails_on_timeout_and_stops_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * (1 << 20))
    status = cli.main(
        ["test", "boot", str(blank), "--firmware", "both", "--usb", "--timeout", "4", "--out", str(tmp_path / "out")]
    )
    lines = capsys.readouterr().out.splitlines()
    assert status == 1
    assert [line.split(":")[0] for line in lines] == ["FAIL bios-usb", "FAIL uefi-usb"]
    assert "no '(XEN) Xen version' within 4 s" in lines[0]
    # Nothing left running that still has the image open.
    left = subprocess.run(["pgrep", "-f", str(blank)], capture_output=True, text=True)
    assert left.stdout == ""
    # The private copy of the UEFI variables is gone too.
    assert not list((tmp_path / "out/test-boot").glob("*VARS*"))


def test_missing_image_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["test", "boot", str(tmp_path / "nope.iso"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"test boot: {tmp_path / 'nope.iso'}: no such file"


def test_store_is_not_needed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`test boot` reads only the image: a user's CI can run it on a downloaded ISO, with no store or manifest."""
    image = tmp_path / "downloaded.iso"
    image.write_bytes(b"\0" * 2048 * 16)  # boots nothing: QEMU starts, no marker comes
    store, out = tmp_path / "store", tmp_path / "out"
    argv = ["-f", str(tmp_path / "no-manifest.yaml"), "--store", str(store), "--out", str(out)]
    code = cli.main([*argv, "test", "boot", str(image), "--firmware", "bios", "--timeout", "2"])
    assert code == 1 and "FAIL bios-cd:" in capsys.readouterr().out  # it ran QEMU on the image
    assert not store.exists() and (out / "test-boot/bios-cd.serial.log").is_file()
