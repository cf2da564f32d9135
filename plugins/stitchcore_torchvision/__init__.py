"""stitchcore plugin: torchvision (in progress)."""
