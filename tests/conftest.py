pytest_plugins = ["tests.fixtures.qwen_vocab"]
