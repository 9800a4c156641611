"""attnc.frontend."""
