"""The ``ditfarm`` command line: the top layer, the only one that sees both the render path and the tools."""
