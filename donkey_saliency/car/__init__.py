"""donkey_saliency.car."""
