"""`python -m herbaria ...` runs the `herbaria` command (also `accelerate launch -m herbaria finetune ...`)."""

import sys

from herbaria.cli import main

sys.exit(main())
