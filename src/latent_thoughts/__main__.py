"""``python -m latent_thoughts`` runs the command line."""

import sys

from latent_thoughts.cli import main

sys.exit(main())
