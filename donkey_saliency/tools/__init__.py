"""donkey_saliency.tools."""
