"""conjugacy: are two ways of training a model dynamically equivalent?

Record parameter trajectories, estimate Koopman eigenvalues by DMD, and compare
eigenvalue sets with Wasserstein distances. Submodules import their heavy
dependencies themselves, so `import conjugacy.config` stays light.
"""

__version__ = "0.1.0"
