"""``python -m relayrl ...`` is the ``relayrl`` command (see relayrl/cli.py)."""

import sys

from relayrl.cli import main

sys.exit(main())
