"""Test setup: fake four CPU devices before JAX starts, and shared small fixtures."""

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")
