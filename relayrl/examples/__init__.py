"""Small environments and setups that show a feature, importable by users and by tests (no Ray here)."""
