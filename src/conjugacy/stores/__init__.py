"""The on-disk contracts: trajectory and spectrum stores (xarray on Zarr v3), verify, read-ahead."""
