"""``python -m sert.report DIR``: the same as ``sert-report DIR``."""

import sys

from sert.report.cli import main

sys.exit(main())
