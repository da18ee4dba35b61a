"""Selection: per-problem gradient capture and projection, the cached rollout and feature stages, LearnAlign
scoring, every selection rule the papers compare, GradAlign's curriculum, answer perplexity."""
