"""sockmesh xds_client package."""
