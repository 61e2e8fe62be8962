"""Python steps of the quickstart pipeline."""
