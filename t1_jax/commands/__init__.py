"""Subcommands of the ``t1`` command, one module each (see ``t1_jax.cli``)."""
