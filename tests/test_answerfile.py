"""Answerfiles, YAML and XenServer XML: every field read, bad values named in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from xenspin_installer.answerfile import AnswerfileError, iso_answerfile_name
from xenspin_installer.readanswer import load

from builder.answercheck import json_schema

FULL_YAML = """\
mode: install
disk: /dev/sdb
wipe: true
local-storage: false
hostname: host-1
network:
  mode: static
  interface: enp1s0
  address: 192.0.2.10/24
  gateway: 192.0.2.1
  dns: [192.0.2.53, 192.0.2.54]
root:
  password-hash: "$6$salt$abcdefghijklmnopqrstuvwxyz0123456789./ABCDEFGHIJKLMNOP"
  ssh-keys:
    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx admin@example
timezone: Europe/Berlin
keymap: de
serial-console: true
hooks:
  - stage: filesystem-populated
    url: http://192.0.2.1/post.sh
finish: poweroff
"""

FULL_XML = """\
<?xml version="1.0"?>
<installation mode="fresh" srtype="lvm">
  <primary-disk guest-storage="no">sdb</primary-disk>
  <keymap>de</keymap>
  <root-password type="hash">$6$salt$abcdefghijklmnopqrstuvwxyz0123456789./ABCDEFGHIJKLMNOP</root-password>
  <source type="local"/>
  <admin-interface name="eth0" proto="static">
    <ipaddr>192.0.2.10</ipaddr>
    <subnet>255.255.255.0</subnet>
    <gateway>192.0.2.1</gateway>
  </admin-interface>
  <name-server>192.0.2.53</name-server>
  <name-server>192.0.2.54</name-server>
  <timezone>Europe/Berlin</timezone>
  <hostname>host-1</hostname>
  <script stage="filesystem-populated" type="url">http://192.0.2.1/post.sh</script>
  <ntp-server>pool.ntp.org</ntp-server>
  <network-backend>bridge</network-backend>
  <fancy-feature/>
</installation>
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error(tmp_path: Path, text: str, name: str = "a.yaml") -> str:
    with pytest.raises(AnswerfileError) as e:
        load(write(tmp_path, name, text))
    msg = str(e.value)
    assert "\n" not in msg
    return msg.replace(str(tmp_path) + "/", "")


def test_yaml_every_field(tmp_path: Path) -> None:
    a, warnings = load(write(tmp_path, "a.yaml", FULL_YAML))
    assert warnings == []
    assert (a.disk, a.disk_path, a.wipe, a.local_storage, a.hostname) == ("/dev/sdb", "/dev/sdb", True, False, "host-1")
    assert (a.network.mode, a.network.interface, a.network.address) == ("static", "enp1s0", "192.0.2.10/24")
    assert (a.network.gateway, a.network.dns) == ("192.0.2.1", ["192.0.2.53", "192.0.2.54"])
    assert a.root.password_hash.startswith("$6$salt$") and a.root.password == ""
    assert a.root.ssh_keys == ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx admin@example"]
    assert (a.timezone, a.keymap, a.serial_console, a.finish) == ("Europe/Berlin", "de", True, "poweroff")
    assert [(h.stage, h.url) for h in a.hooks] == [("filesystem-populated", "http://192.0.2.1/post.sh")]


def test_yaml_defaults_and_plain_password(tmp_path: Path) -> None:
    a, _ = load(write(tmp_path, "a.yaml", "root:\n  password: 0123\n"))
    assert a.root.password == "0123"  # a number-looking password stays as written
    assert (a.disk, a.wipe, a.local_storage, a.hostname, a.network.mode) == ("", False, True, "xenspin", "dhcp")
    assert (a.timezone, a.keymap, a.serial_console, a.finish) == ("UTC", "us", None, "reboot")
    assert load(write(tmp_path, "b.yaml", "disk: sda\nroot: {password: x}\n"))[0].disk_path == "/dev/sda"


def test_xml_every_field_and_a_warning_for_what_is_not_used(tmp_path: Path) -> None:
    a, warnings = load(write(tmp_path, "a.xml", FULL_XML))
    y, _ = load(write(tmp_path, "a.yaml", FULL_YAML))
    assert (a.disk, a.wipe, a.local_storage, a.hostname, a.keymap, a.timezone) == (
        "sdb",
        True,
        False,
        "host-1",
        "de",
        "Europe/Berlin",
    )
    assert (a.network.mode, a.network.interface, a.network.address, a.network.gateway) == (
        "static",
        "eth0",
        "192.0.2.10/24",
        "192.0.2.1",
    )
    assert a.network.dns == y.network.dns
    assert a.root.password_hash == y.root.password_hash
    assert [(h.stage, h.url) for h in a.hooks] == [(h.stage, h.url) for h in y.hooks]
    assert a.ntp == ["pool.ntp.org"]
    assert [w.replace(str(tmp_path) + "/", "") for w in warnings] == [
        "a.xml:19: warning: fancy-feature: not an element of XenServer's answerfile format; ignored"
    ]


def test_xml_plain_password_and_dhcp(tmp_path: Path) -> None:
    xml = """<installation><primary-disk>sda</primary-disk><root-password>s3cret</root-password>
    <admin-interface name="eth0" proto="dhcp"/></installation>"""
    a, warnings = load(write(tmp_path, "a.xml", xml))
    assert (a.root.password, a.root.password_hash, a.network.mode, a.local_storage, warnings) == (
        "s3cret",
        "",
        "dhcp",
        True,
        [],
    )


def test_format_by_content_and_iso_name(tmp_path: Path) -> None:
    p = write(tmp_path, "answers", "<installation><root-password>x</root-password></installation>")
    assert load(p)[0].root.password == "x"
    assert iso_answerfile_name(p) == "xenspin/answerfile.xml"
    assert iso_answerfile_name(write(tmp_path, "a.yml", "root: {password: x}")) == "xenspin/answerfile.yaml"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "root: {password: x}\nhostname: bad_name\n",
            "a.yaml:2: hostname: 'bad_name' (expected letters, digits and -, at most 63)",
        ),
        (
            "root: {password: x}\nwipe: yes please\n",
            "a.yaml:2: wipe: got the string 'yes please' (expected true or false)",
        ),
        (
            "root: {password: x}\nnetwork: {mode: dhcpp}\n",
            "a.yaml:2: network.mode: got the string 'dhcpp' (expected one of dhcp, static); did you mean 'dhcp'?",
        ),
        (
            "root: {password: x}\nnetwork:\n  mode: static\n",
            "a.yaml:3: network.address: missing (expected an address with prefix length for static)",
        ),
        (
            "root: {password: x}\nnetwork:\n  mode: static\n  address: 10.0.0.300/24\n",
            "a.yaml:4: network.address: '10.0.0.300/24' is not an address (expected e.g. 192.0.2.10/24)",
        ),
        (
            "root: {password: x}\nnetwork:\n  dns: [one.one]\n",
            "a.yaml:3: network.dns[0]: 'one.one' (expected an IP address)",
        ),
        ("hostname: h\n", "a.yaml:1: root: gives no way to log in (expected password, password-hash or ssh-keys)"),
        (
            "root: {password-hash: secret}\n",
            "a.yaml:1: root.password-hash: is not allowed (expected a crypt hash like $6$... or $y$...)",
        ),
        (
            "root: {password: x, password-hash: $6$a$b}\n",
            "a.yaml:1: root.password-hash: given with password (expected only one)",
        ),
        (
            "root: {ssh-keys: [hello]}\n",
            "a.yaml:1: root.ssh-keys[0]: 'hello' (expected an SSH public key on one line, e.g. ssh-ed25519 AAAA... comment)",
        ),
        ("root: {password: x}\nhostnme: h\n", "a.yaml:2: hostnme: unknown field; did you mean 'hostname'?"),
        (
            "root: {password: x}\ntimezone: ../../etc/passwd\n",
            "a.yaml:2: timezone: '../../etc/passwd' (expected a zone name like Europe/Berlin)",
        ),
        (
            "root: {password: x}\nhooks:\n  - {stage: later, url: http://x/y}\n",
            "a.yaml:3: hooks[0].stage: got the string 'later' (expected one of installation-start, filesystem-populated, installation-complete)",
        ),
        (
            "root: {password: x}\nhooks:\n  - {stage: installation-start, url: ftp://x/y}\n",
            "a.yaml:3: hooks[0].url: 'ftp://x/y' (expected http://, https:// or file:/PATH)",
        ),
        (
            "root: {password: x}\ndisk: sda; rm -rf /\n",
            "a.yaml:2: disk: 'sda; rm -rf /' (expected a disk name, e.g. sda, /dev/sda or /dev/disk/by-id/...)",
        ),
        ("root: [x\n", "a.yaml:2: not valid YAML: expected ',' or ']', but got '<stream end>'"),
        ("", "a.yaml: is empty (expected a mapping with root:)"),
        ("- a\n", "a.yaml:1: (top): got a list (expected a mapping)"),
    ],
)
def test_yaml_bad_values_one_line(tmp_path: Path, text: str, expected: str) -> None:
    assert error(tmp_path, text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            '<installation mode="repair"><root-password>x</root-password></installation>',
            "a.xml:1: installation mode: 'repair' is not supported (expected fresh, upgrade or restore)",
        ),
        (
            "<installation>\n<root-password type='md5'>x</root-password></installation>",
            "a.xml:2: root-password@type: 'md5' (expected plaintext or hash)",
        ),
        (
            "<installation>\n<root-password>x</root-password>\n<admin-interface proto='static'><ipaddr>10.0.0.1</ipaddr></admin-interface></installation>",
            "a.xml:3: admin-interface/subnet: missing (expected for proto=static)",
        ),
        (
            "<installation>\n<root-password>x</root-password>\n<admin-interface proto='static'>\n<ipaddr>10.0.0.1</ipaddr>\n<subnet>255.0.255.0</subnet></admin-interface></installation>",
            "a.xml:5: admin-interface/subnet: '255.0.255.0' (expected a netmask)",
        ),
        (
            "<installation>\n<root-password>x</root-password>\n<hostname>a b</hostname></installation>",
            "a.xml:3: hostname: 'a b' (expected letters, digits and -, at most 63)",
        ),
        (
            "<installation>\n<root-password>x</root-password>\n<script stage='sometime'>http://x</script></installation>",
            "a.xml:3: script@stage: 'sometime' (expected one of installation-start, filesystem-populated, installation-complete)",
        ),
        (
            "<installation>\n<primary-disk>sda</primary-disk></installation>",
            "a.xml:1: root: gives no way to log in (expected password, password-hash or ssh-keys)",
        ),
        (
            "<installation>\n<root-password>x</root-password>\n<hostname>a</hostname>\n<hostname>b</hostname></installation>",
            "a.xml:4: hostname: given twice (first on line 3)",
        ),
        ("<installation>\n<root-password>x</root-password>\n", "a.xml:3: not valid XML: no element found"),
        ('<!DOCTYPE x [<!ENTITY a "aaaa">]>\n<installation/>', "a.xml:1: DTDs and entities are not accepted"),
        ("<answers/>", "a.xml:1: answers: unexpected root element (expected <installation>)"),
    ],
)
def test_xml_bad_values_one_line(tmp_path: Path, text: str, expected: str) -> None:
    assert error(tmp_path, text, "a.xml") == expected


def test_schema_accepts_the_full_example_and_rejects_a_typo() -> None:
    schema = json_schema()
    jsonschema.validate(yaml.safe_load(FULL_YAML), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"root": {"password": "x"}, "hostnme": "h"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"root": {"password": "x", "ssh-keys+": []}}, schema)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True)


def test_validate_answerfile_cli(tmp_path: Path) -> None:
    good = run_cli("validate-answerfile", str(write(tmp_path, "a.xml", FULL_XML)))
    assert good.returncode == 0, good.stderr
    assert "valid (installs to sdb, host host-1)" in good.stdout
    assert good.stderr.count("\n") == 1 and "a.xml:19: warning: fancy-feature: not an element" in good.stderr
    bad = run_cli("validate-answerfile", str(write(tmp_path, "b.yaml", "root: {password: x}\nkeymap: US\n")))
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("b.yaml:2: keymap: 'US' (expected a layout name like us or de)")
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    shown = run_cli("schema", "--answerfile")
    assert json.loads(shown.stdout)["$defs"]["Answerfile"]["required"] == ["root"]
