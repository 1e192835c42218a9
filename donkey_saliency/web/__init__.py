"""donkey_saliency.web."""
