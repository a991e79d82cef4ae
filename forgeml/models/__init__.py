"""Model families, one per file, chosen by name from `forgeml.models.registry`."""
