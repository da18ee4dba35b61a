"""Training: the GRPO loss (the one the gradient features differentiate), its settings object, the GRPO loop,
supervised pre-training and resumable training states."""
