"""jaxscape: LLM safety landscapes in JAX."""
