"""Config-file tools (``python -m ddpo3d.configs.merge``)."""
