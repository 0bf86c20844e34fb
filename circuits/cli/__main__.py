"""``python -m circuits.cli`` runs the CLI."""

import sys

from circuits.cli import main

sys.exit(main())
