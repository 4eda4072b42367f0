"""The ``sia`` command: a thin face over the library. ``sia_engine.cli.api`` is the public
module that plugin commands use."""
