"""Policy and generation: the built-in tiny policy (build, tokenizer, load, save), generation backends
(transformers with seeded sampling, vLLM) and rollouts (K verified samples per problem)."""
