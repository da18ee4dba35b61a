"""Training: the GRPO loss (the one the gradient features differentiate), its settings objects, GRPO through TRL
(the launched script and the engine that binds TRL to our loss) and supervised pre-training."""
