"""Importing this module registers every workload (one module per task family)."""
from . import charrnn, cifar, deepobs, dnc_copy, imdb, kernel, matfac, mnist  # noqa: F401
