"""sockmesh integration package."""
