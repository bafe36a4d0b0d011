"""Koopman spectra: observables of a trajectory, one-pass accumulation, and DMD."""
