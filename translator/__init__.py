"""sockmesh translator package."""
