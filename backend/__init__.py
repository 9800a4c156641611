"""attnc.backend."""
