"""stitchcore plugin: zoo (in progress)."""
