"""``python -m siblings``: the same as the ``siblings`` command (also for ``torchrun -m``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
