"""stitchcore plugin: effnet_lite (in progress)."""
