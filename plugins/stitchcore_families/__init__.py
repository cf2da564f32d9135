"""stitchcore plugin: families (in progress)."""
