"""``python -m qsmrep``: the command line (:mod:`qsmrep.cli`)."""

import sys

from qsmrep.cli import main

if __name__ == "__main__":
    sys.exit(main())
