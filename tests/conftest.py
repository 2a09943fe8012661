"""Test setup: fake four CPU devices before JAX starts, and share one compilation cache per session.

Many tests run a command line (train.py, evaluate.py, convert, upscale) in a new process, and each new
process compiled the same tiny models again (a tiny train.py run: 28 s cold, 12 s from the cache). The
first process that imports this file (pytest-xdist's controller) makes a fresh cache folder and puts it
in the environment, which the workers and every subprocess inherit: no run reuses another run's entries.
JAX's defaults keep programs that compile in under a second out of it; caching every program made
in-process tests slower (tests/test_models.py: 140 s instead of 89 s). A bounded size turns on the
cache's file lock, so concurrent processes never read a half-written entry.
"""

import atexit
import os
import shutil
import tempfile

import jax

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="adadsr-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache_dir, JAX_COMPILATION_CACHE_MAX_SIZE=str(8 << 30))
# This process imported jax before setting the variables, so it takes them through the config.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"] or None)
jax.config.update("jax_compilation_cache_max_size", int(os.environ.get("JAX_COMPILATION_CACHE_MAX_SIZE", -1)))
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")
