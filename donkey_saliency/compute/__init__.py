"""donkey_saliency.compute."""
