"""donkey_saliency.util."""
