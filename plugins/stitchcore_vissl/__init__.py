"""stitchcore plugin: vissl (in progress)."""
