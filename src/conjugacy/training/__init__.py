"""Training: batched systems stepped and recorded into trajectory stores, with checkpoints."""
