"""stitchcore plugin: datasets (in progress)."""
