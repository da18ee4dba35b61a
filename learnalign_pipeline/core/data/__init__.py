"""Data: the normalized problem table, the embedded arithmetic generator, loaders for user files (JSONL,
Parquet, CSV, save_to_disk), noisy-gold pools and dataset fingerprints."""
