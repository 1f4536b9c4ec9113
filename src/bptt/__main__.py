"""``python -m bptt``: the ``bptt`` command."""

import sys

from .cli import main

sys.exit(main())
