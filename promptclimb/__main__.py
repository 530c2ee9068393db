"""``python -m promptclimb`` is the ``promptclimb`` command."""

import sys

from promptclimb.cli import main

sys.exit(main())
