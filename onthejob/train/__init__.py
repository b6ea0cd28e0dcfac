"""Training: pretraining, RL and distillation losses with their loops; checkpoints."""
