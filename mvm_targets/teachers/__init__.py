"""Frozen teacher networks: where their weights live (`weights`) and how they run (`runtime`)."""
