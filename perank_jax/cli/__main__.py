"""`python -m perank_jax.cli`: the `perank` command."""
import sys

from perank_jax.cli import main

sys.exit(main())
