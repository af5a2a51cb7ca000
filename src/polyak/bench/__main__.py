"""``python -m polyak.bench [bench|data] ...``: the ``polyak`` command."""
import sys

from .cli import main

sys.exit(main())
