"""Verdicts: Wasserstein distances between spectra and the permutation test over seeds."""
