"""donkey_saliency.tubs."""
