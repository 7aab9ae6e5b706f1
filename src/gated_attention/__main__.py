"""``python -m gated_attention`` runs the command-line interface."""

import sys

from gated_attention.cli import main

sys.exit(main())
