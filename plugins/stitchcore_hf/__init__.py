"""stitchcore plugin: hf (in progress)."""
