"""Trust II, input: manifest and answerfile strings have grammars, and YAML/XML bombs are one line.

Each attack is tried as a user would (the CLI, the installer) and must have no effect: the
one-line refusal (exit 2), nothing written, no boot menu entry added, no time or memory spent.
"""

from __future__ import annotations

import dataclasses
import io
import resource
import shlex
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, get_args, get_origin

import jsonschema
import pytest
from conftest import one_line
from xenspin_installer import answerfile as answer_model

from builder import answercheck, cli, dataschema, iso, manifest

ROOT = Path(__file__).resolve().parent.parent

DISTRO = """\
name: tiny
version: "2.5"
components:
  installer:
    source: {path: installer}
iso:
  label: Tiny
  boot:
    xen-cmdline: console=com1,vga com1=115200
    dom0-cmdline: console=hvc0
"""

# Generous: the refusal takes well under a second; the unbounded loader took 47 s and 2 GB.
QUICK = 5.0
# The installer's dom0 has 1 GiB; the CLI gets as much address space to prove it does not need more.
MEMORY = 1024 * 1024 * 1024


def project(tmp_path: Path, text: str = DISTRO) -> Path:
    (tmp_path / "installer").mkdir(exist_ok=True)
    (tmp_path / "distro.yaml").write_text(text)
    return tmp_path / "distro.yaml"


def xenspin(*argv: str) -> tuple[int, str]:
    """Run the CLI in-process; its exit code and stderr."""
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, err.getvalue()


def refused(*argv: str) -> str:
    code, err = xenspin(*argv)
    assert code == 2, err
    return one_line(err)


def limited(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run argv in its own process within MEMORY of address space; the result and the seconds it took."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))

    start = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, preexec_fn=cap)
    return proc, time.monotonic() - start


def loaded(path: Path) -> manifest.Distro:
    return manifest.load(path)


def bypassed(distro: manifest.Distro, **iso_fields: Any) -> manifest.Distro:
    """The distro with iso fields set as if validation had been skipped (to test the writers alone)."""
    boot_fields = {
        k: iso_fields.pop(k) for k in list(iso_fields) if k in ("xen_cmdline", "dom0_cmdline", "bios", "uefi")
    }
    boot = dataclasses.replace(distro.iso.boot, **boot_fields)
    return dataclasses.replace(distro, iso=dataclasses.replace(distro.iso, boot=boot, **iso_fields))


# --- every string has a grammar ------------------------------------------------------------


def string_fields(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """(field path, type) of every string, list-of-strings item and mapping key under cls."""
    from xenspin_installer.grammar import bare

    out = []
    for f, tp in dataschema.fields_of(cls):
        key = prefix + dataschema.yaml_key(f)
        members = dataschema.union_args(tp) or (tp,)
        for m in (a for a in members if a is not type(None)):
            if get_origin(m) is list:
                m = get_args(m)[0]
                key_ = key + "[]"
            elif get_origin(m) is dict:
                out.append((key + " (key)", get_args(m)[0]))
                m, key_ = get_args(m)[1], key + ".NAME"
            else:
                key_ = key
            if dataclasses.is_dataclass(m):
                out += string_fields(m, key_ + ".")
            elif bare(m) is str:
                out.append((key_, m))
    return out


@pytest.mark.parametrize("model", [manifest.Distro, answer_model.Answerfile], ids=["manifest", "answerfile"])
def test_every_string_field_has_a_grammar_and_the_schema_says_it(model: type) -> None:
    from xenspin_installer.grammar import grammars

    fields = string_fields(model)
    assert len(fields) > 10
    missing = [key for key, tp in fields if not grammars(tp)]
    assert missing == []
    schema = answercheck.json_schema() if model is answer_model.Answerfile else manifest.json_schema()
    patterns = set(schema_patterns(schema))
    for key, tp in fields:
        assert grammars(tp)[0].pattern in patterns, key


def schema_patterns(node: Any) -> list[str]:
    """Every "pattern" in a JSON Schema, however deep."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "pattern"] + [p for v in node.values() for p in schema_patterns(v)]
    if isinstance(node, list):
        return [p for v in node for p in schema_patterns(v)]
    return []


def test_schema_refuses_what_the_loaders_refuse() -> None:
    schema = manifest.json_schema()
    for bad in (
        {"iso": {"filename": "../../../../etc/x-{name}.iso"}},
        {"iso": {"label": "x'\nmenuentry 'evil' {"}},
        {"iso": {"boot": {"xen-cmdline": 'a"\nb'}}},
        {"name": "a/b"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"root": {"password": "x"}, "network": {"interface": "eth0\n[Network]"}}, answercheck.json_schema()
        )


# --- iso.filename ------------------------------------------------------------------------


def test_iso_filename_traversal_is_refused_and_nothing_is_written_outside(tmp_path: Path) -> None:
    path = project(tmp_path, DISTRO.replace("iso:\n", 'iso:\n  filename: "../../../../etc/x-{name}.iso"\n'))
    line = refused("-f", str(path), "validate")
    assert line.startswith(f"{path}:7: iso.filename: '../../../../etc/x-{{name}}.iso' (expected a file name")
    # Were validation skipped, the ISO writer refuses too, before a byte is written.
    good = loaded(project(tmp_path))
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    evil = bypassed(good, filename="../../escaped-{name}.iso", bios=False, uefi=False)
    rootfs = fake_rootfs(tmp_path / "rootfs")
    inp = iso.Inputs(evil, rootfs, "k", iso.Loaders(Path("/"), {}, "host"), iso.GuestTools(), 1_700_000_000)
    with pytest.raises(iso.IsoError) as e:
        iso.make(work, inp, tmp_path / "iso.log", "0" * 64)
    one_line(e, "iso: iso.filename becomes '../../escaped-tiny.iso'")
    assert not (tmp_path / "a" / "escaped-tiny.iso").exists()
    assert [p.name for p in tmp_path.rglob("*.iso")] == []


@pytest.mark.parametrize(
    "field, value",
    [("name", "a" * 300), ("version", "1/../../../etc/z"), ("version", "1.0\n")],
    ids=["name-too-long-for-a-file-name", "version-with-slashes", "version-with-newline"],
)
def test_name_and_version_cannot_break_the_iso_filename(tmp_path: Path, field: str, value: str) -> None:
    old = "name: tiny" if field == "name" else 'version: "2.5"'
    path = project(tmp_path, DISTRO.replace(old, f"{field}: {json_str(value)}"))
    line = refused("-f", str(path), "validate")
    assert line.startswith(f"{path}:{1 if field == 'name' else 2}: {field}: ")


# --- boot menu labels and command lines ------------------------------------------------------

EVIL_LABEL = "x'\n}\nmenuentry 'root shell' {\n  linux /live/vmlinuz init=/bin/sh\n}\n#"


def test_label_with_quote_and_newline_cannot_add_a_grub_entry(tmp_path: Path) -> None:
    path = project(tmp_path, DISTRO.replace("label: Tiny", f'label: "{EVIL_LABEL}"'.replace("\n", "\\n")))
    line = refused("-f", str(path), "validate")
    assert line.startswith(f"{path}:7: iso.label: ") and "(expected one line" in line
    # The writers, given such a label anyway, refuse it (one line, no config written).
    evil = bypassed(loaded(project(tmp_path)), label=EVIL_LABEL)
    for write in (iso.grub_cfg, iso.isolinux_cfg):
        with pytest.raises(iso.IsoError) as e:
            write(evil, iso.menu(evil))
        one_line(e, "iso: ")


def test_label_with_a_quote_is_quoted_in_grub_cfg(tmp_path: Path) -> None:
    """A quote alone (no newline) cannot close the title: GRUB reads the whole label as the title."""
    label = "x' --id evil 'y"
    path = project(tmp_path, DISTRO.replace("label: Tiny", f'label: "{label}"'))
    assert refused("-f", str(path), "validate").startswith(f"{path}:7: iso.label: ")
    evil = bypassed(loaded(project(tmp_path)), label=label)
    cfg = iso.grub_cfg(evil, iso.menu(evil))
    entries = [line for line in cfg.splitlines() if line.startswith("menuentry ")]
    assert len(entries) == 6
    for line, entry in zip(entries, iso.menu(evil), strict=True):
        assert shlex.split(line) == ["menuentry", entry.title, "--id", entry.id, "{"]


@pytest.mark.parametrize("key", ["xen-cmdline", "dom0-cmdline"])
@pytest.mark.parametrize(
    "value",
    [
        'console=hvc0"\nGRUB_CMDLINE_LINUX="init=/bin/sh',  # a second variable in /etc/default/grub.d/xen.cfg
        "quiet $(touch /tmp/xenspin-pwned)",  # run by the shell that sources that file
        "quiet\n}\nmenuentry evil {",
        "quiet; linux /x",
        "quiet --- /live/evil",  # a module of its own for ISOLINUX's mboot.c32
    ],
)
def test_command_line_with_newline_quote_or_shell_is_refused(tmp_path: Path, key: str, value: str) -> None:
    old = "console=com1,vga com1=115200" if key == "xen-cmdline" else "console=hvc0"
    path = project(tmp_path, DISTRO.replace(f"{key}: {old}", f"{key}: {json_str(value)}"))
    line = refused("-f", str(path), "validate")
    assert line.startswith(f"{path}:{9 if key == 'xen-cmdline' else 10}: iso.boot.{key}: ")
    assert "(expected command line words" in line


@pytest.mark.parametrize("value", ["quiet\ninit=/bin/sh", "quiet --- /live/evil"])
def test_isolinux_writer_refuses_what_its_format_cannot_quote(tmp_path: Path, value: str) -> None:
    evil = bypassed(loaded(project(tmp_path)), dom0_cmdline=value)
    with pytest.raises(iso.IsoError) as e:
        iso.isolinux_cfg(evil, iso.menu(evil))
    one_line(e, "iso: dom0 command line ")


def test_grub_writer_quotes_command_line_words(tmp_path: Path) -> None:
    evil = bypassed(loaded(project(tmp_path)), xen_cmdline="a;b $x 'c'")
    cfg = iso.grub_cfg(evil, iso.menu(evil))
    line = next(x for x in cfg.splitlines() if "multiboot2" in x)
    assert shlex.split(line) == ["multiboot2", "/boot/xen.gz", "placeholder", "a;b", "$x", "'c'"]


def json_str(value: str) -> str:
    """value as a double-quoted YAML scalar on one line."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def test_keys_with_newlines_stay_one_line(tmp_path: Path) -> None:
    """A key is echoed in the error's field: its newline is shown escaped, never printed."""
    path = project(tmp_path, DISTRO + '"x\\nmenuentry": 1\n')
    assert refused("-f", str(path), "validate").startswith(f"{path}:11: x\\nmenuentry: unknown field")
    path = project(tmp_path, DISTRO.replace("components:\n", 'components:\n  "a\\nb": {}\n'))
    assert refused("-f", str(path), "validate").startswith(f"{path}:4: components.a\\nb: 'a\\nb' (expected lowercase")
    answer = tmp_path / "a.yaml"
    answer.write_text('root: {password: x}\n"x\\ny": 1\n')
    assert refused("validate-answerfile", str(answer)).startswith(f"{answer}:2: x\\ny: unknown field")


# --- answerfile strings --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, field",
    [
        ('network:\n  interface: "eth0\\n[Network]\\nDNS=203.0.113.66"\n', "network.interface"),
        ("network:\n  interface: eth0:1\n", "network.interface"),
        ("network:\n  interface: a-very-long-interface-name\n", "network.interface"),
        ("network:\n  interface: '*'\n", "network.interface"),
        ('network:\n  dns: ["fe80::1%eth0\\n[Network]"]\n', "network.dns[0]"),
        ('hostname: "xen1\\n"\n', "hostname"),
        ('keymap: "de\\n"\n', "keymap"),  # XKBLAYOUT="de<newline>" in /etc/default/keyboard
        ("disk: sda/../../tmp/x\n", "disk"),
        ("hooks:\n  - {stage: installation-start, url: 'file:/../../etc/shadow'}\n", "hooks[0].url"),
        ('root: {ssh-keys: ["ssh-ed25519 AAAA a\\rcommand=/bin/sh"]}\n', "root.ssh-keys[0]"),
    ],
)
def test_answerfile_strings_that_would_add_config_lines_are_refused(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(("" if text.startswith("root:") else "root: {password: x}\n") + text)
    line = refused("validate-answerfile", str(path))
    assert line.startswith(f"{path}:") and f": {field}: " in line


def test_xml_interface_name_with_newline_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(
        "<installation>\n<root-password>x</root-password>\n"
        '<admin-interface name="eth0&#10;[Network]&#10;DNS=203.0.113.66" proto="dhcp"/>\n</installation>\n'
    )
    line = refused("validate-answerfile", str(path))
    assert line.startswith(f"{path}:3: network.interface: 'eth0\\n[Network]")


def test_password_with_newline_is_refused_and_not_shown(tmp_path: Path) -> None:
    """chpasswd reads one user:password a line: a newline would set a second account's password."""
    path = tmp_path / "a.yaml"
    path.write_text('root: {password: "s3cret\\nnobody:owned"}\n')
    line = refused("validate-answerfile", str(path))
    assert (
        line == f"{path}:1: root.password: is not allowed (expected a password of at most 256 characters on one line)"
    )


# --- YAML and XML bombs --------------------------------------------------------------------


def laughs(levels: int = 9) -> str:
    """The classic billion laughs in YAML: nine levels of nine aliases, under 400 bytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_answerfile_is_one_line_quickly(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(laughs())
    assert path.stat().st_size < 400
    proc, took = limited([sys.executable, "-m", "builder", "validate-answerfile", str(path)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr).startswith(f"{path}:") and "alias bomb" in proc.stderr
    assert took < QUICK


def test_billion_laughs_answerfile_in_build_and_in_the_installer(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(laughs())
    path = project(tmp_path)
    build = [sys.executable, "-m", "builder", "-f", str(path), "--store", "store", "--out", "out"]
    proc, took = limited([*build, "build", "--answerfile", str(bomb)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr).startswith(f"{bomb}:") and "alias bomb" in proc.stderr
    assert took < QUICK
    assert not (tmp_path / "out").exists()
    # The installer itself, in as much memory as its dom0 has.
    proc, took = limited(
        [
            sys.executable,
            "-m",
            "xenspin_installer",
            "--answerfile",
            str(bomb),
            "--check",
            "--log",
            str(tmp_path / "install.log"),
            "--cmdline",
            str(tmp_path / "none"),
            "--medium",
            str(tmp_path),
        ],
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr, "xenspin installer: ") and "alias bomb" in proc.stderr
    assert took < QUICK


def test_billion_laughs_manifest_is_one_line_quickly(tmp_path: Path) -> None:
    path = project(tmp_path, DISTRO + "description:\n" + "".join(f"  {line}\n" for line in laughs().splitlines()))
    proc, took = limited([sys.executable, "-m", "builder", "-f", str(path), "validate"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    # The sixth level (line 17) is where the expansion passes 100,000 values.
    assert one_line(proc.stderr) == "distro.yaml:17: document expands to over 100000 values (an alias bomb?)"
    assert took < QUICK


def test_aliases_cannot_nest_deeper_than_the_limit(tmp_path: Path) -> None:
    """Each alias adds the depth of what it names: 40 anchors of 30 levels are 1200 levels to walk."""
    lines = ["a0: &a0 " + "[" * 30 + "1" + "]" * 30]
    lines += [f"a{i}: &a{i} " + "[" * 30 + f"*a{i - 1}" + "]" * 30 for i in range(1, 40)]
    path = project(tmp_path, DISTRO + "description:\n" + "".join(f"  {line}\n" for line in lines))
    assert refused("-f", str(path), "validate") == f"{path}:13: nested deeper than 32 levels (expected a manifest)"


@pytest.mark.parametrize("kind", ["manifest", "answerfile"])
def test_200000_nested_brackets_are_one_line(tmp_path: Path, kind: str) -> None:
    deep = "[" * 200_000 + "]" * 200_000
    if kind == "manifest":
        path = project(tmp_path, DISTRO + f"description: {deep}\n")
        argv = [sys.executable, "-m", "builder", "-f", str(path), "validate"]
        expected = "distro.yaml:11: nested deeper than 32 levels (expected a manifest)"
    else:
        path = tmp_path / "deep.yaml"
        path.write_text(f"root: {{password: x}}\nhostname: {deep}\n")
        argv = [sys.executable, "-m", "builder", "validate-answerfile", str(path)]
        expected = f"{path}:2: nested deeper than 10 levels (expected an answerfile)"
    proc, took = limited(argv, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) == expected
    assert took < QUICK


def test_xml_entity_bomb_is_refused_quickly(tmp_path: Path) -> None:
    entities = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    ]
    path = tmp_path / "bomb.xml"
    path.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE installation [\n'
        + "\n".join(entities)
        + "\n]>\n<installation><hostname>&lol9;</hostname><root-password>x</root-password></installation>\n"
    )
    proc, took = limited([sys.executable, "-m", "builder", "validate-answerfile", str(path)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) == f"{path}:2: DTDs and entities are not accepted"
    assert took < QUICK


def test_deep_and_wide_xml_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / "deep.xml"
    deep.write_text("<installation>" + "<a>" * 100_000 + "</a>" * 100_000 + "</installation>\n")
    assert (
        refused("validate-answerfile", str(deep)) == f"{deep}:1: nested deeper than 10 levels (expected an answerfile)"
    )
    wide = tmp_path / "wide.xml"
    wide.write_text("<installation>" + "<a/>" * 20_000 + "</installation>\n")
    assert refused("validate-answerfile", str(wide)) == f"{wide}:1: holds over 10000 elements (expected an answerfile)"


def fake_rootfs(root: Path) -> Path:
    """The files the ISO stage reads from the rootfs stage, with stand-in contents."""
    (root / "boot").mkdir(parents=True)
    for rel in ("rootfs.squashfs", "packages.json", "boot/xen.gz", "boot/vmlinuz", "boot/initrd.img"):
        (root / rel).write_bytes(b"x")
    (root / "boot/disk-initrd.img-6.1.0-1-amd64").write_bytes(b"x")
    return root


# --- no field names a host file by URL --------------------------------------------------------


def test_no_manifest_field_takes_a_file_url() -> None:
    """A file:// URL in a spin or recipe would be a host path the host reads for the spin's author:
    every string field of the manifest refuses one (local copies come through the user's mirror map)."""
    from xenspin_installer.grammar import grammars

    url_fields = []
    for key, tp in string_fields(manifest.Distro):
        (grammar,) = grammars(tp)
        if grammar.ok("https://example.invalid/x") and not grammar.ok("plain"):  # a URL, not a path or text
            url_fields.append(key)
            assert not grammar.ok("file:///etc/shadow"), key
            assert not grammar.ok("file:/etc/shadow"), key
    # git, tarball, prebuilt, a signature, the base archive, each update suite's mirror
    assert len(url_fields) >= 6, url_fields


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("components:\n  hello:\n    source: {git: 'file:///root/private.git'}\n", "components.hello.source.git"),
        ("components:\n  hello:\n    source: {url: 'file:///etc/shadow'}\n", "components.hello.source.url"),
        ("base:\n  mirror: file:///srv/debian\n", "base.mirror"),
    ],
)
def test_file_urls_are_refused_with_the_way_to_a_local_copy(tmp_path: Path, text: str, field: str) -> None:
    manifest_path = project(tmp_path, DISTRO.replace("components:\n", text, 1) if "hello" in text else DISTRO + text)
    line = refused("-f", str(manifest_path), "validate")
    assert f": {field}: " in line and "map it to a local copy with --mirror" in line, line
