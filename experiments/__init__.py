"""Studies of the BILD method (scripts that train and measure; not part of the package)."""
