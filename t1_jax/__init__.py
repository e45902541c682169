"""t1-jax: T1 ("Thought 1") generative retrieval in JAX/Flax for TPU pods."""

__version__ = "0.1.0"
