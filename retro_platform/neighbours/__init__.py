"""Index to neighbours: every chunk's k nearest chunks, and the tokens RETRO's encoder reads."""
