"""Training systems: the optimizer toys and the fully connected nets."""
