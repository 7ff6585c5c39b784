"""What the tests share: builders of tiny models and runs, servers on 127.0.0.1, container stand-ins.

Test modules import from here, never from each other; fixtures that use these live in conftest.py."""
