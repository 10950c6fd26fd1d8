"""`python -m local.cli` is `batchdrop` (what `up --detach` runs in the background)."""

import sys

from local.cli.entry import main

sys.exit(main())
