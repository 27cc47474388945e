"""The runner: everything ``retro-platform run`` does after validation, point by point."""
