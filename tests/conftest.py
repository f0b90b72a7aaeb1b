import jax
import pytest

pytest_plugins = ["tests.fixtures.qwen_vocab"]


@pytest.fixture(scope="module", autouse=True)
def _free_compiled_programs():
    """Drops JAX's compiled programs after each test module. XLA:CPU maps memory regions for every
    executable it keeps; one process running the whole suite passed Linux's limit of 65,530
    mappings (vm.max_map_count) and died in the compiler with a segmentation fault."""
    yield
    jax.clear_caches()
