"""Tasks: one kind of problem each, and the registry every verb asks."""
