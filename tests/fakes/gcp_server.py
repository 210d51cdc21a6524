"""Old home of the loopback Google fake, now the package tests/fakes/gcp/ (one module per
API). Kept as a re-export only for importers not yet switched (test_gcp_deploy_flow.py);
import from `tests.fakes.gcp` instead."""

from tests.fakes.gcp import *  # noqa: F403
from tests.fakes.gcp import __all__  # noqa: F401
