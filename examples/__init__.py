"""Examples that extend perank-jax from outside the package (docs/extending.md)."""
