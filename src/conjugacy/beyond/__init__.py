"""Beyond the comparison: Koopman jumps ahead (predict, accelerate), pruning and monitoring."""
