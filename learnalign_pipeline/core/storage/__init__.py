"""Storage: content hashes, verified artifact files (Parquet, safetensors, checkpoint directories) and the
row cache that lets reruns reuse finished rows. Depends on nothing else in core."""
