"""`python -m fashionlab ...` (and `torchrun -m fashionlab ...`) run the CLI."""

import sys

from fashionlab.cli import main

sys.exit(main())
