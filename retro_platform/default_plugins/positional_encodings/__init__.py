"""The built-in positional encodings, one small module each, registered through the hook."""
