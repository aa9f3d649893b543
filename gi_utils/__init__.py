"""gi_utils."""
