"""The command-line programs of runtime: one module per ``runtime`` command.

They use the library (:mod:`runtime`); the library never imports them.
"""
