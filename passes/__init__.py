"""attnc.passes."""
