"""Pretraining data for violet_core: a text tokenizer, clip augmentations that move frames and cached
MVM targets together, and the cache-backed pretraining Dataset."""
