pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.earshot", "tests.fixtures.api", "tests.fixtures.ingest", "tests.fixtures.triton"]
