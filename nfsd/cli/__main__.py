"""`python -m nfsd.cli`: the `realize` command (how `realize start` runs its server)."""

import sys

from nfsd.cli import main

sys.exit(main())
